"""CNN encoder: image -> a set of feature vectors, one per feature-map position."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from slot_jax.models.conv import Conv
from slot_jax.models.layers import MLP, SoftPositionEmbed


class CNNEncoder(nn.Module):
    """Convolutions (ReLU after each), soft position embedding, LayerNorm and an MLP.

    Returns a dict with `features` [B, h*w, D] and the feature-map size `grid` (h, w).
    """

    channels: Sequence[int] = (32, 32, 32, 32)
    kernel_sizes: Sequence[int] = (5, 5, 5, 5)
    strides: Sequence[int] = (1, 2, 2, 1)
    mlp_features: Sequence[int] = (32, 32)
    conv_impl: str = "auto"  # see slot_jax.models.conv.CONV_IMPLS

    @nn.compact
    def __call__(self, image: jnp.ndarray) -> dict:
        x = image
        for i, (width, kernel, stride) in enumerate(zip(self.channels, self.kernel_sizes, self.strides, strict=True)):
            # Named as nn.Conv would be, so checkpoints do not depend on the lowering.
            x = nn.relu(Conv(width, (kernel, kernel), strides=(stride, stride), padding="SAME",
                             impl=self.conv_impl, name=f"Conv_{i}")(x))
        x = SoftPositionEmbed()(x)
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = MLP(self.mlp_features)(nn.LayerNorm()(x))
        return {"features": x, "grid": (height, width)}
