"""Pure train and eval steps of the VAE and of the slot-conditioned latent diffusion model.

The diffusion steps take the frozen VAE as an argument, `frozen = {"vae": params,
"latent_scale": scalar}`, so its weights are neither trained nor baked into the compiled step.
"""
import jax
import jax.numpy as jnp

from slot_jax.evaluation.segmentation import segmentation_metrics
from slot_jax.models import diffusion
from slot_jax.models.autoencoder import attention_masks
from slot_jax.models.vae import vae_loss
from slot_jax.training.step import apply_gradients_if_finite, images_to_float


def vae_train_step(state, batch, *, model, optimizer, kl_weight: float):
    image = images_to_float(batch["image"])
    latent_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        outputs = model.apply({"params": params}, image, rngs={"latent": latent_rng})
        terms = vae_loss(outputs, image, kl_weight)
        return jnp.mean(terms["total"]), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients_if_finite(state, loss, grads, optimizer,
                                     recon_mse=jnp.mean(terms["recon"]), kl=jnp.mean(terms["kl"]))


def vae_eval_step(params, batch, rng, *, model, kl_weight: float):
    """Reconstructs from the posterior mean; per-example loss terms and posterior means."""
    del rng  # deterministic
    image = images_to_float(batch["image"])
    outputs = model.apply({"params": params}, image, sample_posterior=False)
    terms = vae_loss(outputs, image, kl_weight)
    return outputs, {"loss": terms["total"], "recon_mse": terms["recon"], "kl": terms["kl"],
                     "latent_mean": outputs["mean"], "valid": batch["valid"]}


def encode_latents(vae, frozen, image):
    """Diffusion targets x0: the VAE's posterior mean, scaled to unit variance."""
    posterior = vae.apply({"params": frozen["vae"]}, image, method=vae.encode)
    return jax.lax.stop_gradient(posterior["mean"] * frozen["latent_scale"])


def decode_latents(vae, frozen, latents):
    """Latents from the sampler -> images in [0, 1]."""
    image = vae.apply({"params": frozen["vae"]}, latents / frozen["latent_scale"], method=vae.decode)
    return jnp.clip(image, 0.0, 1.0)


def diffusion_loss_terms(params, image, rng, frozen, *, model, vae, schedule, prediction):
    """Per-example MSE between the UNet's output and its target at random timesteps."""
    x0 = encode_latents(vae, frozen, image)
    slots_rng, noise_rng = jax.random.split(rng)
    t, noise, x_t = diffusion.sample_training_inputs(schedule, x0, noise_rng)
    outputs = model.apply({"params": params}, image, x_t, t, rngs={"slots": slots_rng})
    target = diffusion.training_target(schedule, x0, t, noise, prediction)
    return diffusion.per_example_mse(outputs["prediction"], target), outputs


def diffusion_train_step(state, batch, frozen, *, model, vae, schedule, prediction, optimizer):
    image = images_to_float(batch["image"])
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        per_example, _ = diffusion_loss_terms(params, image, rng, frozen, model=model, vae=vae,
                                              schedule=schedule, prediction=prediction)
        return jnp.mean(per_example)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return apply_gradients_if_finite(state, loss, grads, optimizer)


def diffusion_eval_step(params, batch, rng, frozen, *, model, vae, schedule, prediction, num_true: int):
    """Denoising loss at random timesteps (fixed by `rng`) and segmentation scores of the last Slot
    Attention iteration's attention, bilinearly upsampled and turned into ids by argmax."""
    image = images_to_float(batch["image"])
    loss, outputs = diffusion_loss_terms(params, image, rng, frozen, model=model, vae=vae,
                                         schedule=schedule, prediction=prediction)
    num_slots = outputs["slots"].shape[1]
    attention_ids = jnp.argmax(attention_masks(outputs["attn"], image.shape[1:3]), axis=1)
    scores = segmentation_metrics(attention_ids, batch["mask"], batch["valid"], num_pred=num_slots,
                                  num_true=num_true)
    results = {"loss": loss, "valid": batch["valid"], **{f"attention/{k}": v for k, v in scores.items()}}
    return {"slots": outputs["slots"], "attn": outputs["attn"]}, results
