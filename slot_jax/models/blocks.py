"""Convolutional blocks shared by the VAE and the denoising UNet."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from slot_jax.errors import UserError
from slot_jax.models.conv import Conv, cast_to, conv2d, resolve_conv_impl
from slot_jax.models.norm import GroupNorm
from slot_jax.models.upsample import conv_transpose_by_phases


def check_group_norm_widths(widths: Sequence[int], num_groups: int, owner: str) -> None:
    """Raises a one-line UserError unless `num_groups` divides every GroupNorm width."""
    if num_groups < 1:
        raise UserError(f"{owner}: num_groups must be positive, got {num_groups}")
    bad = sorted({w for w in widths if w % num_groups})
    if bad:
        raise UserError(f"{owner}: num_groups={num_groups} must divide every channel count, "
                        f"but not {', '.join(map(str, bad))}; pick channels that are multiples of it")


def check_divisible_size(height: int, width: int, factor: int, owner: str) -> None:
    """Raises a one-line UserError unless both sides are multiples of `factor`."""
    if height % factor or width % factor:
        raise UserError(f"{owner}: input size {height}x{width} must be divisible by {factor} "
                        f"(2 ** number of downsamplings)")


class ZeroConv(nn.Module):
    """A stride-1 'SAME' `Conv` whose kernel and bias start at zero, so the branch it ends
    contributes nothing at initialisation (residual branches, output heads)."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    impl: str = "auto"
    dtype: Optional[Any] = None  # compute dtype, as in `Conv`

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k = self.kernel_size[0]
        kernel = self.param("kernel", nn.initializers.zeros, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = cast_to(self.dtype, x, kernel, bias)
        return conv2d(x, kernel, 1, "SAME", self.impl, bias)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, [+ projected time embedding], GroupNorm, SiLU, conv3x3, plus
    the input (through a 1x1 conv when the width changes). The convolutions compute in `dtype`
    (None: their input's); the norms and the residual sum in float32."""

    features: int
    num_groups: int = 8
    zero_init_last: bool = False  # the block starts as the identity (or the 1x1 skip)
    conv_impl: str = "auto"
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, time_emb: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        h = nn.silu(GroupNorm(self.num_groups, name="norm_in")(x))
        h = Conv(self.features, (3, 3), impl=self.conv_impl, dtype=self.dtype, name="conv_in")(h)
        if time_emb is not None:
            h = h + nn.Dense(self.features, name="time_proj")(nn.silu(time_emb))[:, None, None, :]
        h = nn.silu(GroupNorm(self.num_groups, name="norm_out")(h))
        last = ZeroConv if self.zero_init_last else Conv
        h = last(self.features, (3, 3), impl=self.conv_impl, dtype=self.dtype, name="conv_out")(h)
        if x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), impl=self.conv_impl, dtype=self.dtype, name="skip")(x)
        return x.astype(jnp.float32) + h.astype(jnp.float32)


class Downsample(nn.Module):
    """Halves the resolution with a stride-2 conv3x3 ('SAME' pads one row/column after)."""

    features: int
    conv_impl: str = "auto"
    dtype: Optional[Any] = None  # compute dtype, as in `Conv`

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return Conv(self.features, (3, 3), strides=(2, 2), impl=self.conv_impl, dtype=self.dtype, name="conv")(x)


# Row a of the 4-tap kernel sums the 3x3 taps that read the same input pixel after a nearest 2x
# repeat: output pixel 2m reads x[m-1] through tap 0 and x[m] through taps 1 and 2; pixel 2m+1
# reads x[m] through taps 0 and 1 and x[m+1] through tap 2.
_NEAREST_TAPS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)


def nearest_upsample_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """The [3, 3, C, O] kernel of a 'SAME' conv3x3 applied after a nearest-neighbour 2x repeat ->
    the [4, 4, C, O] kernel of the stride-2 'SAME' transposed convolution that computes the same."""
    taps = jnp.asarray(_NEAREST_TAPS, kernel.dtype)
    return jnp.einsum("ai,bj,ijco->abco", taps, taps, kernel)


class NearestUpsampleConv(nn.Module):
    """conv3x3(nearest 2x repeat of x), with `Conv`'s parameters. Where the convolution runs on
    oneDNN it is computed as the equivalent transposed convolution phase by phase: 2x2 taps per
    output pixel instead of 3x3, and the 4x larger repeated input is never built."""

    features: int
    impl: str = "auto"
    dtype: Optional[Any] = None  # compute dtype, as in `Conv`

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c_in = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, bias = cast_to(self.dtype, x, bias)
        if resolve_conv_impl(self.impl, c_in, self.features, 1, 3, 2 * min(x.shape[1:3])) == "onednn":
            # The 4x4 kernel's taps are sums of 3x3 ones: summed in float32, rounded once.
            return conv_transpose_by_phases(x, nearest_upsample_kernel(kernel), 2, "SAME", self.impl, bias)
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv2d(x, kernel.astype(x.dtype), 1, "SAME", self.impl, bias)


class Upsample(nn.Module):
    """Doubles the resolution: nearest-neighbour repeat, then conv3x3 (no checkerboard
    artefacts, unlike a stride-2 transposed conv)."""

    features: int
    conv_impl: str = "auto"
    dtype: Optional[Any] = None  # compute dtype, as in `Conv`

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return NearestUpsampleConv(self.features, self.conv_impl, self.dtype, name="conv")(x)
