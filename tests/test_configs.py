"""Every config variant builds: its model and train state are traced with eval_shape."""
import functools
import importlib.util

import jax
import pytest

from conftest import SA_CONFIG
from slot_jax.config_loader import load_config
from slot_jax.data.builtin import get_dataset
from slot_jax.models.autoencoder import build_autoencoder
from slot_jax.training.experiment import check_config
from slot_jax.training.optimizer import build_optimizer
from slot_jax.training.state import create_train_state

_spec = importlib.util.spec_from_file_location("sa_config", SA_CONFIG)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


@pytest.mark.parametrize("variant", _module.VARIANTS)
def test_slot_attention_variant_builds(variant):
    config = load_config(f"{SA_CONFIG}:{variant}")
    info = get_dataset(config.data.name)
    check_config(config, info, num_devices=len(jax.devices()))
    model = build_autoencoder(config.model)
    optimizer = build_optimizer(config.train)
    image_shape = (config.data.global_batch_size, *info.image_size, 3)
    state = jax.eval_shape(functools.partial(create_train_state, model, optimizer, image_shape),
                           jax.random.PRNGKey(0))
    assert state.step.shape == ()
    outputs = jax.eval_shape(lambda p: model.apply({"params": p}, jax.numpy.zeros(image_shape),
                                                   rngs={"slots": jax.random.PRNGKey(0)}), state.params)
    assert outputs["recon"].shape == image_shape
    assert outputs["masks"].shape[1] == config.model.num_slots


def test_report_variant_matches_the_report():
    config = load_config(f"{SA_CONFIG}:report")
    assert get_dataset(config.data.name).image_size == (128, 128)
    assert (config.model.num_slots, config.model.slot_size, config.model.num_iterations) == (11, 64, 3)
    assert tuple(config.model.encoder.channels) == (32, 32, 32, 32)
    assert tuple(config.model.encoder.strides) == (1, 2, 2, 1)
    assert (config.train.learning_rate, config.data.global_batch_size, config.train.schedule) == (1e-4, 32, "plateau")
    assert (config.train.plateau_factor, config.train.plateau_patience, config.train.min_learning_rate) == (0.1, 3, 1e-7)
    steps_per_epoch = -(-config.data.epoch_size // config.data.global_batch_size)
    assert config.train.eval_every == steps_per_epoch  # the plateau rule acts once an epoch
    assert config.train.num_steps == 45 * steps_per_epoch


def _variants(name):
    spec = importlib.util.spec_from_file_location(f"{name}_config", SA_CONFIG.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


@pytest.mark.parametrize("variant", _variants("vae"))
def test_vae_variant_builds(variant):
    from slot_jax.models.vae import build_vae
    from slot_jax.training.vae_experiment import check_vae_config

    config = load_config(f"{SA_CONFIG.with_name('vae.py')}:{variant}")
    info = get_dataset(config.data.name)
    check_vae_config(config, info, num_devices=len(jax.devices()))
    model = build_vae(config.model)
    image = jax.ShapeDtypeStruct((2, *info.image_size, 3), jax.numpy.float32)
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.PRNGKey(0),
                                                     "latent": jax.random.PRNGKey(1)}, x), image)
    latent = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.encode)["mean"], variables, image)
    factor = model.downsampling_factor
    assert latent.shape == (2, info.image_size[0] // factor, info.image_size[1] // factor, config.model.latent_channels)


@pytest.mark.parametrize("variant", _variants("diffusion"))
def test_diffusion_variant_builds(variant):
    from slot_jax.models.slot_diffusion import build_slot_diffusion
    from slot_jax.training.diffusion_experiment import check_diffusion_config

    config = load_config(f"{SA_CONFIG.with_name('diffusion.py')}:{variant}")
    info = get_dataset(config.data.name)
    check_diffusion_config(config, info, num_devices=len(jax.devices()))
    check_config(config.autoencoder, get_dataset(config.autoencoder.data.name), num_devices=len(jax.devices()))
    model = build_slot_diffusion(config.model)
    factor = 2 ** (len(config.vae.model.channels) - 1)
    latent = (2, info.image_size[0] // factor, info.image_size[1] // factor, config.vae.model.latent_channels)
    shapes = (jax.ShapeDtypeStruct((2, *info.image_size, 3), jax.numpy.float32),
              jax.ShapeDtypeStruct(latent, jax.numpy.float32), jax.ShapeDtypeStruct((2,), jax.numpy.int32))
    outputs = jax.eval_shape(lambda *x: model.init_with_output(
        {"params": jax.random.PRNGKey(0), "slots": jax.random.PRNGKey(1)}, *x)[0], *shapes)
    assert outputs["prediction"].shape == latent
    assert outputs["slots"].shape == (2, config.model.num_slots, config.model.slot_size)


def test_diffusion_report_variant_matches_the_report():
    config = load_config(f"{SA_CONFIG.with_name('diffusion.py')}:report")
    assert get_dataset(config.data.name).image_size == (128, 128)
    assert (config.model.num_slots, config.model.slot_size, config.model.num_iterations) == (11, 64, 3)
    assert 2 ** (len(config.vae.model.channels) - 1) == 4
    assert config.vae.model.latent_channels == 3  # 128x128x3 -> 32x32x3
    assert (config.train.learning_rate, config.data.global_batch_size) == (4e-4, 32)
    steps_per_epoch = -(-config.data.epoch_size // config.data.global_batch_size)
    assert (config.train.schedule, config.train.decay_steps, config.train.decay_rate) == ("step_decay", steps_per_epoch, 0.95)
    assert config.train.num_steps == 38 * steps_per_epoch
    assert (config.diffusion.prediction, config.sampler.name, config.sampler.num_steps) == ("epsilon", "ddpm", 1000)
