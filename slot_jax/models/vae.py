"""KL-regularised convolutional VAE (a scaled-down LDM autoencoder): images in [0, 1] to latents
at 1/f of the resolution, f = 2 ** (len(channels) - 1), for the latent diffusion decoder."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from slot_jax.errors import UserError
from slot_jax.models.blocks import (Downsample, ResBlock, Upsample, check_divisible_size,
                                    check_group_norm_widths)
from slot_jax.models.conv import Conv, example_chunk, in_batch_chunks
from slot_jax.models.norm import GroupNorm

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in float32


class VAEEncoder(nn.Module):
    """image [B,H,W,3] in [0, 1] -> dict(mean, logvar), each [B, H/f, W/f, latent_channels]."""

    channels: Sequence[int] = (32, 64, 128)
    num_res_blocks: int = 1
    latent_channels: int = 3
    num_groups: int = 8
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, image: jnp.ndarray) -> dict:
        check_divisible_size(*image.shape[1:3], 2 ** (len(self.channels) - 1), "VAE")
        x = Conv(self.channels[0], (3, 3), impl=self.conv_impl, name="conv_in")(2.0 * image - 1.0)
        for level, width in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                x = ResBlock(width, self.num_groups, conv_impl=self.conv_impl)(x)
            if level < len(self.channels) - 1:
                x = Downsample(width, self.conv_impl)(x)
        x = nn.silu(GroupNorm(self.num_groups, name="norm_out")(x))
        moments = Conv(2 * self.latent_channels, (3, 3), impl=self.conv_impl, name="conv_out")(x)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return {"mean": mean, "logvar": jnp.clip(logvar, *LOGVAR_RANGE)}


class VAEDecoder(nn.Module):
    """latent [B,h,w,latent_channels] -> image [B, f*h, f*w, 3], on the [0, 1] scale (unclipped)."""

    channels: Sequence[int] = (32, 64, 128)
    num_res_blocks: int = 1
    num_groups: int = 8
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, latent: jnp.ndarray) -> jnp.ndarray:
        x = Conv(self.channels[-1], (3, 3), impl=self.conv_impl, name="conv_in")(latent)
        for level in reversed(range(len(self.channels))):
            for _ in range(self.num_res_blocks):
                x = ResBlock(self.channels[level], self.num_groups, conv_impl=self.conv_impl)(x)
            if level > 0:
                x = Upsample(self.channels[level - 1], self.conv_impl)(x)
        x = nn.silu(GroupNorm(self.num_groups, name="norm_out")(x))
        x = Conv(3, (3, 3), impl=self.conv_impl, name="conv_out")(x)
        return (x + 1.0) / 2.0


class VAE(nn.Module):
    """`encode(image) -> dict(mean, logvar)`, `decode(latent) -> image`, and
    `__call__(image, sample_posterior=True) -> dict(recon, mean, logvar, latent)`; the posterior
    sample draws its noise from the "latent" rng stream."""

    channels: Sequence[int] = (32, 64, 128)
    num_res_blocks: int = 1
    latent_channels: int = 3
    num_groups: int = 8
    conv_impl: str = "auto"
    # Images per chunk in which encoder and decoder run; 0: cache-sized chunks on a one-device CPU
    # (conv.batch_chunk), the whole batch elsewhere. Each image is coded alone: same function.
    batch_chunk: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.channels:
            raise UserError("VAE: channels needs at least one entry (one per resolution level)")
        check_group_norm_widths(self.channels, self.num_groups, "VAE")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def setup(self):
        self.encoder = VAEEncoder(self.channels, self.num_res_blocks, self.latent_channels,
                                  self.num_groups, self.conv_impl)
        self.decoder = VAEDecoder(self.channels, self.num_res_blocks, self.num_groups, self.conv_impl)

    def _chunk(self, batch: int, height: int, width: int) -> int:
        """The widest tensor, level 0's activations of an image, sets how many fit in a chunk."""
        return example_chunk(self.batch_chunk, batch, height * width * self.channels[0] * 4)

    def encode(self, image: jnp.ndarray) -> dict:
        return in_batch_chunks(self.encoder, self._chunk(*image.shape[:3]), image)

    def decode(self, latent: jnp.ndarray) -> jnp.ndarray:
        batch, height, width, _ = latent.shape
        f = self.downsampling_factor
        return in_batch_chunks(self.decoder, self._chunk(batch, f * height, f * width), latent)

    def __call__(self, image: jnp.ndarray, sample_posterior: bool = True) -> dict:
        posterior = self.encode(image)
        mean, logvar = posterior["mean"], posterior["logvar"]
        latent = mean
        if sample_posterior:
            noise = jax.random.normal(self.make_rng("latent"), mean.shape, mean.dtype)
            latent = mean + jnp.exp(0.5 * logvar) * noise
        return {"recon": self.decode(latent), "mean": mean, "logvar": logvar, "latent": latent}


def build_vae(vae_config) -> VAE:
    """Builds the VAE from a config with the VAE's field names."""
    c = vae_config
    return VAE(channels=tuple(c.channels), num_res_blocks=c.num_res_blocks,
               latent_channels=c.latent_channels, num_groups=c.num_groups, conv_impl=c.conv_impl)


def kl_divergence(mean: jnp.ndarray, logvar: jnp.ndarray) -> jnp.ndarray:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example [B], summed over the latent dimensions."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def vae_loss(outputs: dict, image: jnp.ndarray, kl_weight: float) -> dict:
    """Per-example terms [B]: `recon` (MSE, mean over pixels), `kl` (summed over latent dims),
    `total` = recon + kl_weight * kl."""
    recon = jnp.mean(jnp.square(outputs["recon"] - image), axis=(1, 2, 3))
    kl = kl_divergence(outputs["mean"], outputs["logvar"])
    return {"recon": recon, "kl": kl, "total": recon + kl_weight * kl}
