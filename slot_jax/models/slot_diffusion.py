"""Slot Attention encoder with a slot-conditioned latent diffusion decoder (the report's Part 2).

The image is encoded to slots; the UNet denoises VAE latents with cross-attention to the slots.
The VAE is not part of this module: it is trained first and frozen (see training/diffusion_step).
"""
import flax.linen as nn
import jax.numpy as jnp

from slot_jax.models.autoencoder import build_encoder, build_slot_attention, build_slot_init, compute_dtype
from slot_jax.models.unet import build_unet


class SlotDiffusionModel(nn.Module):
    """Named outputs: `encode` -> slots [B,K,D], attn [B,K,h,w]; `denoise` -> the UNet's
    prediction (eps, v or x0) for latents x_t [B,h',w',C] at timesteps t [B]."""

    encoder: nn.Module
    slot_init: nn.Module
    slot_attention: nn.Module
    unet: nn.Module

    def encode(self, image: jnp.ndarray) -> dict:
        encoded = self.encoder(image)
        slots = self.slot_init(image.shape[0])
        slots, attention = self.slot_attention(slots, encoded["features"])
        return {"slots": slots, "attn": attention.reshape(*attention.shape[:2], *encoded["grid"])}

    def denoise(self, x_t: jnp.ndarray, t: jnp.ndarray, slots: jnp.ndarray) -> jnp.ndarray:
        return self.unet(x_t, t, slots)

    def __call__(self, image: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> dict:
        outputs = self.encode(image)
        outputs["prediction"] = self.denoise(x_t, t, outputs["slots"])
        return outputs


def build_slot_diffusion(model_config) -> SlotDiffusionModel:
    """From `config.model` of configs/diffusion.py: the autoencoder's encoder fields plus `unet`."""
    m = model_config
    return SlotDiffusionModel(encoder=build_encoder(m), slot_init=build_slot_init(m),
                              slot_attention=build_slot_attention(m), unet=build_unet(m.unet, compute_dtype(m)))
