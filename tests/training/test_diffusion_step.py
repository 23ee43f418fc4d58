"""The diffusion train and eval steps on a tiny model: the loss they optimise, the frozen VAE, and
the segmentation from Slot Attention's attention."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from slot_jax.config_loader import config_from_args
from slot_jax.data.builtin import get_dataset
from slot_jax.models import diffusion
from slot_jax.models.slot_diffusion import build_slot_diffusion
from slot_jax.models.vae import build_vae
from slot_jax.training.diffusion_step import (decode_latents, diffusion_eval_step, diffusion_loss_terms,
                                              diffusion_train_step, encode_latents)
from slot_jax.training.state import state_from_params

TINY = {"model.slot_size": "16", "model.mlp_hidden": "16", "model.encoder.channels": "(8, 8, 8, 8)",
        "model.encoder.mlp_features": "(16, 16)", "model.unet.channels": "8", "model.unet.num_heads": "2",
        "vae.model.channels": "(8, 8, 8)"}


@pytest.fixture(scope="module")
def setup():
    config = config_from_args(f"{REPO / 'configs' / 'diffusion.py'}:quick", TINY)
    info = get_dataset(config.data.name)
    batch = info.generate(0, "train", 0, 8)
    image = jnp.asarray(batch["image"], jnp.float32) / 255.0
    vae, model = build_vae(config.vae.model), build_slot_diffusion(config.model)
    vae_params = vae.init({"params": jax.random.PRNGKey(0), "latent": jax.random.PRNGKey(1)}, image[:1])["params"]
    frozen = {"vae": vae_params, "latent_scale": jnp.float32(0.5)}
    latents = encode_latents(vae, frozen, image)
    params = model.init({"params": jax.random.PRNGKey(2), "slots": jax.random.PRNGKey(3)}, image[:1],
                        latents[:1], jnp.zeros((1,), jnp.int32))["params"]
    schedule = diffusion.make_schedule("linear", 1000)
    return dict(config=config, info=info, batch=batch, image=image, vae=vae, model=model, frozen=frozen,
                params=params, schedule=schedule, latents=latents)


def test_latents_are_the_scaled_posterior_mean_and_decode_inverts_the_scale(setup):
    s = setup
    posterior = s["vae"].apply({"params": s["frozen"]["vae"]}, s["image"], method=s["vae"].encode)
    np.testing.assert_allclose(s["latents"], 0.5 * posterior["mean"], rtol=1e-6)
    decoded = decode_latents(s["vae"], s["frozen"], s["latents"])
    direct = s["vae"].apply({"params": s["frozen"]["vae"]}, posterior["mean"], method=s["vae"].decode)
    np.testing.assert_allclose(decoded, jnp.clip(direct, 0, 1), atol=1e-5)


def test_untrained_unet_predicts_zero_so_the_epsilon_loss_is_the_noise_variance(setup):
    # The UNet's output convolution starts at zero: the loss is E[eps^2] = 1 (8 x 16x16x3 draws).
    s = setup
    loss, outputs = diffusion_loss_terms(s["params"], s["image"], jax.random.PRNGKey(5), s["frozen"],
                                         model=s["model"], vae=s["vae"], schedule=s["schedule"], prediction="epsilon")
    assert loss.shape == (8,) and abs(float(loss.mean()) - 1.0) < 0.1
    np.testing.assert_array_equal(outputs["prediction"], 0.0)
    # With x0 prediction the loss is the latents' own mean square instead.
    loss_x0, _ = diffusion_loss_terms(s["params"], s["image"], jax.random.PRNGKey(5), s["frozen"],
                                      model=s["model"], vae=s["vae"], schedule=s["schedule"], prediction="sample")
    np.testing.assert_allclose(loss_x0, jnp.mean(jnp.square(s["latents"]), axis=(1, 2, 3)), rtol=1e-5)


def test_train_steps_lower_the_loss_and_leave_the_vae_alone(setup):
    s = setup
    optimizer = optax.adam(3e-3)
    step = jax.jit(functools.partial(diffusion_train_step, model=s["model"], vae=s["vae"], schedule=s["schedule"],
                                     prediction="epsilon", optimizer=optimizer))
    state = state_from_params(s["params"], optimizer, jax.random.PRNGKey(7))
    vae_before = jax.tree.map(np.asarray, s["frozen"]["vae"])
    batch = {"image": jnp.asarray(s["batch"]["image"])}
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch, s["frozen"])
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 30 and all(m == 0 for m in [int(metrics["nonfinite"])])
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    jax.tree.map(np.testing.assert_array_equal, vae_before, jax.tree.map(np.asarray, s["frozen"]["vae"]))


def test_eval_step_scores_the_upsampled_attention(setup):
    from slot_jax.evaluation.segmentation import segmentation_metrics
    from slot_jax.models.autoencoder import attention_masks

    s = setup
    batch = {"image": jnp.asarray(s["batch"]["image"]), "mask": jnp.asarray(s["batch"]["mask"]),
             "valid": jnp.ones((8,), bool)}
    outputs, results = diffusion_eval_step(s["params"], batch, jax.random.PRNGKey(0), s["frozen"],
                                           model=s["model"], vae=s["vae"], schedule=s["schedule"],
                                           prediction="epsilon", num_true=s["info"].max_entities)
    ids = jnp.argmax(attention_masks(outputs["attn"], s["image"].shape[1:3]), axis=1)
    expected = segmentation_metrics(ids, batch["mask"], batch["valid"], num_pred=outputs["slots"].shape[1],
                                    num_true=s["info"].max_entities)
    np.testing.assert_allclose(results["attention/ari"], expected["ari"], atol=1e-6)
    np.testing.assert_allclose(results["attention/fg_ari"], expected["fg_ari"], atol=1e-6)
    assert results["loss"].shape == (8,)
