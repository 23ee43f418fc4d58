"""The jitted train step: data parallelism changes nothing, and bad steps change nothing."""

import jax
import numpy as np

from conftest import SA_CONFIG, TINY_OVERRIDES
from slot_jax.config_loader import config_from_args
from slot_jax.data.pipeline import BatchIterator
from slot_jax.training import mesh as mesh_lib
from slot_jax.training.experiment import Experiment


def tiny_config(**extra):
    return config_from_args(f"{SA_CONFIG}:quick", {**TINY_OVERRIDES, **{k: str(v) for k, v in extra.items()}})


def _two_steps(devices):
    config = tiny_config()
    experiment = Experiment(config, devices=devices)
    state = experiment.init_state()
    batches = BatchIterator(experiment.info, "train", 8, config.data.seed)
    history = []
    for _ in range(2):
        state, metrics = experiment.train_step(state, mesh_lib.global_batch(next(batches), experiment.mesh))
        history.append(jax.device_get(metrics))
    batches.close()
    return jax.device_get(state.params), history


def test_train_step_on_four_devices_equals_one_device():
    assert len(jax.devices()) >= 4, "tests/conftest.py should give 4 simulated CPU devices"
    params_1, metrics_1 = _two_steps(jax.devices()[:1])
    params_4, metrics_4 = _two_steps(jax.devices()[:4])
    for m1, m4 in zip(metrics_1, metrics_4):
        np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
        np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    # Adam divides by sqrt(v): on near-zero gradients summation-order noise shows up at a few % of
    # one learning-rate step (4e-4), hence the absolute tolerance.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), params_1, params_4)
    # The step did move the parameters.
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params_1, jax.device_get(
        Experiment(tiny_config(), devices=jax.devices()[:1]).init_state().params))
    assert max(jax.tree.leaves(moved)) > 0


def test_a_non_finite_step_leaves_the_state_unchanged_and_is_reported():
    config = tiny_config()
    experiment = Experiment(config, devices=jax.devices()[:1])
    state = experiment.init_state()
    batch = BatchIterator(experiment.info, "train", 8, 0, prefetch=0).batch_at(0)
    # A NaN in the conv kernels makes the loss NaN.
    poisoned = state.replace(params=jax.tree.map(lambda p: p * np.nan if p.ndim == 4 else p, state.params))
    poisoned_params = jax.device_get(poisoned.params)  # the step donates (deletes) its input state
    new_state, metrics = experiment.train_step(poisoned, mesh_lib.global_batch(batch, experiment.mesh))
    assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == 1
    same = jax.tree.map(lambda a, b: np.array_equal(a, b, equal_nan=True), jax.device_get(new_state.params),
                        poisoned_params)
    assert all(jax.tree.leaves(same))
