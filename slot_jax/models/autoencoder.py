"""The Slot Attention autoencoder, composed from swappable parts."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from slot_jax.models.decoder import SpatialBroadcastDecoder
from slot_jax.models.encoder import CNNEncoder
from slot_jax.models.slot_attention import GaussianSlotInit, LearnedSlotInit, SlotAttention


class SlotAutoencoder(nn.Module):
    """image [B, H, W, 3] in [0, 1] -> named outputs.

    recon [B,H,W,3], slot_images [B,K,H,W,3], masks [B,K,H,W,1] (decoder alpha masks),
    slots [B,K,D], attn [B,K,h,w] (last Slot Attention iteration, on the feature grid).
    """

    encoder: nn.Module
    slot_init: nn.Module
    slot_attention: nn.Module
    decoder: nn.Module

    @nn.compact
    def __call__(self, image: jnp.ndarray) -> dict:
        encoded = self.encoder(image)
        slots = self.slot_init(image.shape[0])
        slots, attention = self.slot_attention(slots, encoded["features"])
        outputs = dict(self.decoder(slots))
        outputs["slots"] = slots
        outputs["attn"] = attention.reshape(*attention.shape[:2], *encoded["grid"])
        return outputs


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(model_config):
    """The convolutions' compute dtype, `model.compute_dtype` (float32 when a config lacks it)."""
    return COMPUTE_DTYPES[model_config.get("compute_dtype", "float32")]


def build_encoder(model_config) -> CNNEncoder:
    m = model_config
    return CNNEncoder(channels=tuple(m.encoder.channels), kernel_sizes=tuple(m.encoder.kernel_sizes),
                      strides=tuple(m.encoder.strides), mlp_features=tuple(m.encoder.mlp_features),
                      conv_impl=m.conv_impl, dtype=compute_dtype(m))


def build_slot_init(model_config) -> nn.Module:
    initialisers = {"gaussian": GaussianSlotInit, "learned": LearnedSlotInit}
    return initialisers[model_config.slot_init](model_config.num_slots, model_config.slot_size)


def build_slot_attention(model_config) -> SlotAttention:
    m = model_config
    return SlotAttention(num_iterations=m.num_iterations, slot_size=m.slot_size, mlp_hidden=m.mlp_hidden,
                         epsilon=m.epsilon, implicit_grad=m.implicit_grad)


def build_autoencoder(model_config) -> SlotAutoencoder:
    """Builds the autoencoder from `config.model` (see configs/slot_attention.py)."""
    m = model_config
    return SlotAutoencoder(
        encoder=build_encoder(m),
        slot_init=build_slot_init(m),
        slot_attention=build_slot_attention(m),
        decoder=SpatialBroadcastDecoder(
            broadcast_size=tuple(m.decoder.broadcast_size),
            channels=tuple(m.decoder.channels),
            kernel_sizes=tuple(m.decoder.kernel_sizes),
            strides=tuple(m.decoder.strides),
            output_kernel_size=m.decoder.output_kernel_size,
            upsample=m.decoder.upsample,
            conv_impl=m.conv_impl,
            dtype=compute_dtype(m),
        ),
    )


def reconstruction_loss(outputs: dict, image: jnp.ndarray) -> jnp.ndarray:
    """Per-example mean squared error [B]."""
    return jnp.mean(jnp.square(outputs["recon"] - image), axis=(1, 2, 3))


def attention_masks(attention: jnp.ndarray, image_size) -> jnp.ndarray:
    """Bilinearly upsamples attention [B,K,h,w] to [B,K,H,W]."""
    batch, num_slots = attention.shape[:2]
    return jax.image.resize(attention, (batch, num_slots, *image_size), method="bilinear")
