"""The jitted train step: data parallelism changes nothing, and bad steps change nothing."""

import pathlib

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


def _tiny_adam_state():
    import jax.numpy as jnp
    import optax
    from slot_jax.training.state import state_from_params
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.ones((3,))}
    optimizer = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(1e-2))
    state = state_from_params(params, optimizer, jax.random.PRNGKey(0))
    grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.array([1.0, -2.0, 3.0])}
    return state.replace(lr_scale=jnp.float32(0.5)), grads, optimizer


def test_the_guarded_adam_update_is_optax_adam_scaled_by_lr_scale():
    import optax
    from slot_jax.training.step import apply_gradients_if_finite
    state, grads, optimizer = _tiny_adam_state()
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: 0.5 * u, updates)
    expected = optax.apply_updates(state.params, updates)
    new_state, metrics = jax.jit(apply_gradients_if_finite, static_argnums=3)(state, 0.25, grads, optimizer)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state.params, expected)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state.opt_state, opt_state)
    assert int(new_state.step) == 1 and int(metrics["nonfinite"]) == 0
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)
    np.testing.assert_allclose(metrics["update_norm"], optax.tree.norm(updates), rtol=1e-6)
    np.testing.assert_allclose(metrics["param_norm"], optax.tree.norm(expected), rtol=1e-6)


def test_a_nan_gradient_or_loss_changes_neither_parameters_nor_moments():
    from slot_jax.training.step import apply_gradients_if_finite
    state, grads, optimizer = _tiny_adam_state()
    state, _ = apply_gradients_if_finite(state, 0.25, grads, optimizer)  # moments no longer zero
    nan_grads = {**grads, "b": grads["b"].at[1].set(np.nan)}
    for loss, g in ((0.25, nan_grads), (np.inf, grads)):
        new_state, metrics = jax.jit(apply_gradients_if_finite, static_argnums=3)(state, loss, g, optimizer)
        same = jax.tree.map(np.array_equal, (new_state.params, new_state.opt_state), (state.params, state.opt_state))
        assert all(jax.tree.leaves(same))
        assert int(new_state.step) == int(state.step) + 1 and int(metrics["nonfinite"]) == 1
        assert np.isnan(metrics["update_norm"])


def test_the_benchmarks_where_guard_computes_the_same_step():
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
    from nan_guard import apply_gradients_with_where
    from slot_jax.training.step import apply_gradients_if_finite
    state, grads, optimizer = _tiny_adam_state()
    ours, ours_metrics = apply_gradients_if_finite(state, 0.25, grads, optimizer)
    theirs, their_metrics = apply_gradients_with_where(state, 0.25, grads, optimizer)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), (ours.params, ours.opt_state),
                 (theirs.params, theirs.opt_state))
    np.testing.assert_allclose(ours_metrics["update_norm"], their_metrics["update_norm"], rtol=1e-6)
