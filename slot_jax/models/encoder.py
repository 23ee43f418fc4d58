"""CNN encoder: image -> a set of feature vectors, one per feature-map position."""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from slot_jax.models.conv import Conv
from slot_jax.models.layers import MLP, SoftPositionEmbed


class CNNEncoder(nn.Module):
    """Convolutions (ReLU after each), soft position embedding, LayerNorm and an MLP.

    The convolutions compute in `dtype` (bfloat16 is meant for GPUs and TPUs); the rest, which
    is cheap, stays in float32. Returns a dict with `features` [B, h*w, D] and the feature-map
    size `grid` (h, w).
    """

    channels: Sequence[int] = (32, 32, 32, 32)
    kernel_sizes: Sequence[int] = (5, 5, 5, 5)
    strides: Sequence[int] = (1, 2, 2, 1)
    mlp_features: Sequence[int] = (32, 32)
    conv_impl: str = "auto"  # see slot_jax.models.conv.CONV_IMPLS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image: jnp.ndarray) -> dict:
        x = image
        for i, (width, kernel, stride) in enumerate(zip(self.channels, self.kernel_sizes, self.strides, strict=True)):
            # Named as nn.Conv would be, so checkpoints do not depend on the lowering.
            x = Conv(width, (kernel, kernel), strides=(stride, stride), padding="SAME", impl=self.conv_impl,
                     dtype=self.dtype, relu=True, name=f"Conv_{i}")(x)
        x = SoftPositionEmbed()(x.astype(jnp.float32))
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = MLP(self.mlp_features)(nn.LayerNorm()(x))
        return {"features": x, "grid": (height, width)}
