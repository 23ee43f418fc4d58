"""Small building blocks shared by the encoder and the decoders."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def position_grid(height: int, width: int) -> jnp.ndarray:
    """[height, width, 4] grid of (x, y, 1 - x, 1 - y), each in [0, 1]."""
    ys = jnp.linspace(0.0, 1.0, height)
    xs = jnp.linspace(0.0, 1.0, width)
    y, x = jnp.meshgrid(ys, xs, indexing="ij")
    return jnp.stack([x, y, 1.0 - x, 1.0 - y], axis=-1)


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear projection of the position grid to a feature map [..., H, W, C]."""

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        height, width, channels = features.shape[-3:]
        grid = position_grid(height, width).astype(features.dtype)
        return features + nn.Dense(channels, name="project")(grid)


class MLP(nn.Module):
    """Dense layers with ReLU between them (not after the last)."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i, width in enumerate(self.features):
            x = nn.Dense(width)(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x
