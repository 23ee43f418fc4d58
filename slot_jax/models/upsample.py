"""Strided transposed convolution computed as one plain convolution plus depth-to-space.

A stride-s transposed convolution writes each output phase (o mod s) from a fixed subset of the
kernel taps, so the s*s phases are ordinary stride-1 convolutions of the *undilated* input. Stacking
the phase kernels along the output channels gives one convolution with s*s*C outputs, followed by
a depth-to-space shuffle. It computes exactly what `flax.linen.ConvTranspose` (no kernel flip)
computes, with about k*k/ceil(k/s)^2 times fewer multiplications and none of the input-dilated
convolutions that XLA's CPU backend runs slowly.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from slot_jax.models.conv import cast_to, conv2d, depth_to_space


def conv_transpose_same_padding(kernel_size: int, stride: int) -> tuple[int, int]:
    """The (before, after) padding of the zero-dilated input with which `lax.conv_transpose`
    (padding="SAME") turns n inputs into n*s outputs. The dilated input has (n-1)*s + 1 entries, so
    the two sides hold k + s - 2 in all; lax puts k - 1 (a full kernel overhang) before when the
    stride exceeds k - 1, and otherwise the larger half before. (Written out here rather than
    imported from jax's private modules; tests check it against lax.conv_transpose itself.)"""
    total = kernel_size + stride - 2
    before = kernel_size - 1 if stride > kernel_size - 1 else -(-total // 2)
    return before, total - before


def _phase_taps(kernel_size: int, stride: int, pad_before: int):
    """For each phase r: {input offset d: kernel tap t} with y[s*m + r] = sum_d x[m + d] W[t]."""
    phases = []
    for r in range(stride):
        taps = {}
        for t in range(kernel_size):
            j = r + t - pad_before  # index into the dilated input, relative to s*m
            if j % stride == 0:
                taps[j // stride] = t
        phases.append(taps)
    return phases


def subpixel_kernel(kernel: jnp.ndarray, stride: int, padding: str = "SAME"):
    """[k, k, C_in, C_out] transposed-conv kernel -> ([k', k', C_in, s*s*C_out], (lo, hi) padding)."""
    k = kernel.shape[0]
    if kernel.shape[1] != k:
        raise ValueError(f"square kernels only, got {kernel.shape[:2]}")
    if padding != "SAME":
        raise ValueError(f"the sub-pixel transposed convolution supports padding='SAME' only, got {padding!r}")
    pad_before, _ = conv_transpose_same_padding(k, stride)
    phases = _phase_taps(k, stride, pad_before)
    offsets = [d for taps in phases for d in taps]
    lo, hi = min(offsets), max(offsets)
    size = hi - lo + 1
    # gather[r, a] = kernel tap used by phase r at window position a, or k (a zero tap).
    gather = np.full((stride, size), k, dtype=np.int32)
    for r, taps in enumerate(phases):
        for d, t in taps.items():
            gather[r, d - lo] = t
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index k is the zero tap
    c_in, c_out = kernel.shape[2:]
    # combined[a, b, i, (ry, rx, o)] = padded[gather[ry, a], gather[rx, b], i, o]
    combined = padded[gather.T[:, None, :, None], gather.T[None, :, None, :]]  # [size, size, s, s, C_in, C_out]
    combined = jnp.moveaxis(combined, 4, 2).reshape(size, size, c_in, stride * stride * c_out)
    return combined, (-lo, hi)


def conv_transpose_subpixel(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: str = "SAME",
                            conv_impl: str = "auto"):
    combined, (lo, hi) = subpixel_kernel(kernel, stride, padding)
    y = conv2d(x, combined.astype(x.dtype), 1, ((lo, hi), (lo, hi)), conv_impl)
    return depth_to_space(y, stride)


class SubpixelConvTranspose(nn.Module):
    """Drop-in for `nn.ConvTranspose(features, (k, k), strides=(s, s), padding="SAME")`, with the
    same parameter names and shapes, so checkpoints move freely between the two."""

    features: int
    kernel_size: tuple
    strides: tuple
    padding: str = "SAME"
    conv_impl: str = "auto"  # lowering of the inner convolution, see slot_jax.models.conv
    dtype: Optional[Any] = None  # compute dtype, as in flax (None: the input's)

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size[0]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = cast_to(self.dtype, x, kernel, bias)
        return conv_transpose_subpixel(x, kernel, self.strides[0], self.padding, self.conv_impl) + bias
