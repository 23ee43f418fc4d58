"""2-D convolution with a choice of lowering, all computing the same function as `lax.conv`.

XLA's YNNPACK convolutions on the CPU run far below its matmul speed, and worst in the weight
gradient. Two exact rewrites turn a convolution into one large matmul plus memory shuffles:

* `im2col`: gather the k*k input patches [N*Ho*Wo, k*k*C] once, multiply by the kernel. The
  patches are kept for the backward pass, which is two matmuls and a shifted sum (custom VJP,
  because the autodiff transpose of a gather is a slow scatter-add).
* `output_shift`: multiply every input pixel by all k*k taps at once, [N*H*W, C] @ [C, k*k*O],
  then add the k*k shifted slices. Cheaper than im2col when C > O, e.g. the RGB+mask output layer.

'auto' keeps XLA's native convolution off the CPU (GPU and TPU convolutions are fast) and on the
CPU when its Eigen convolutions are in use (slot_jax/xla_cpu.py), which beat both rewrites. Only
under YNNPACK convolutions does it pick a rewrite by the layer's channel ratio (`resolve_conv_impl`).
"""
import functools
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slot_jax import xla_cpu

CONV_IMPLS = ("auto", "native", "im2col", "output_shift")
Padding = Union[str, Sequence[tuple[int, int]]]


def resolve_conv_impl(impl: str, c_in: int, c_out: int, stride: int, kernel_size: int = 3) -> str:
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu" or xla_cpu.eigen_convolutions():
        return "native"
    # YNNPACK convolutions, measured on a 2-core x86 CPU (forward + backward): im2col wins on
    # widening layers (RGB inputs, sub-pixel upsampling with s*s*C outputs), output_shift on
    # strongly narrowing ones (the 4-channel RGB+mask output), XLA's own where C_in ~ C_out.
    if stride == 1 and 4 * c_out <= c_in and kernel_size <= 3:
        return "output_shift"
    if c_out >= 2 * c_in:
        return "im2col"
    return "native"


def _explicit_padding(size: int, k: int, stride: int, padding) -> tuple[int, int]:
    if padding == "SAME":
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        return total // 2, total - total // 2
    if padding == "VALID":
        return 0, 0
    return tuple(padding)


def _paddings(shape, k: int, stride: int, padding: Padding):
    _, h, w, _ = shape
    if isinstance(padding, str):
        return _explicit_padding(h, k, stride, padding), _explicit_padding(w, k, stride, padding)
    return tuple(padding[0]), tuple(padding[1])


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1, padding: Padding = "SAME",
           impl: str = "auto") -> jnp.ndarray:
    """x [N, H, W, C], kernel [k, k, C, O] (HWIO) -> [N, Ho, Wo, O], as `lax.conv_general_dilated`."""
    k = kernel.shape[0]
    if kernel.shape[1] != k:
        raise ValueError(f"square kernels only, got {kernel.shape[:2]}")
    pads = _paddings(x.shape, k, stride, padding)
    impl = resolve_conv_impl(impl, kernel.shape[2], kernel.shape[3], stride, k)
    if impl == "native":
        return lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl == "im2col":
        return _conv_im2col(x, kernel, stride, pads)
    if impl == "output_shift":
        if stride != 1:
            raise ValueError("output_shift convolution supports stride 1 only")
        return _conv_output_shift(x, kernel, pads)
    raise ValueError(f"unknown convolution impl {impl!r}: choose one of {', '.join(CONV_IMPLS)}")


# ----------------------------------------------------------------------------- im2col

def _patches(x, k: int, stride: int, pads):
    (plh, phh), (plw, phw) = pads
    xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    rows = stride * np.arange(ho)[:, None] + np.arange(k)[None, :]  # [Ho, k]
    cols = stride * np.arange(wo)[:, None] + np.arange(k)[None, :]  # [Wo, k]
    # One gather, [N, Ho, Wo, k, k, C]: XLA:CPU runs it ~2x faster than a concatenate of slices.
    patches = xp[:, rows[:, None, :, None], cols[None, :, None, :], :]
    return patches.reshape(-1, k * k * x.shape[-1]), (ho, wo), xp.shape


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col(x, kernel, stride, pads):
    return _im2col_forward(x, kernel, stride, pads)[0]


def _im2col_forward(x, kernel, stride, pads):
    k, _, c, o = kernel.shape
    patches, (ho, wo), padded_shape = _patches(x, k, stride, pads)
    y = (patches @ kernel.reshape(k * k * c, o)).reshape(x.shape[0], ho, wo, o)
    return y, (patches, kernel, x.shape, padded_shape)


def _im2col_backward(stride, pads, residuals, dy):
    patches, kernel, x_shape, padded_shape = residuals
    k, _, c, o = kernel.shape
    n, ho, wo, _ = dy.shape
    dy = dy.reshape(-1, o)
    d_kernel = (patches.T @ dy).reshape(kernel.shape)
    d_patches = (dy @ kernel.reshape(k * k * c, o).T).reshape(n, ho, wo, k, k, c)
    # Each tap's gradient lands back where the tap read from: an interior-padded (strided) shift.
    _, hp, wp, _ = padded_shape
    zero = jnp.zeros((), dy.dtype)
    d_padded = 0
    for i in range(k):
        for j in range(k):
            d_padded = d_padded + lax.pad(d_patches[:, :, :, i, j, :], zero, (
                (0, 0, 0),
                (i, hp - i - stride * (ho - 1) - 1, stride - 1),
                (j, wp - j - stride * (wo - 1) - 1, stride - 1),
                (0, 0, 0)))
    (plh, _), (plw, _) = pads
    return d_padded[:, plh:plh + x_shape[1], plw:plw + x_shape[2], :], d_kernel


_conv_im2col.defvjp(_im2col_forward, _im2col_backward)


# ----------------------------------------------------------------------------- output shift

def _conv_output_shift(x, kernel, pads):
    k, _, c, o = kernel.shape
    n, h, w, _ = x.shape
    taps = kernel.transpose(2, 0, 1, 3).reshape(c, k * k * o)
    z = (x.reshape(-1, c) @ taps).reshape(n, h, w, k, k, o)
    (plh, phh), (plw, phw) = pads
    z = jnp.pad(z, ((0, 0), (plh, phh), (plw, phw), (0, 0), (0, 0), (0, 0)))
    ho, wo = z.shape[1] - k + 1, z.shape[2] - k + 1
    # y[h, w] = sum_ij x[h + i - pad, w + j - pad] W[i, j] = sum_ij z[h + i, w + j, i, j]
    return sum(z[:, i:i + ho, j:j + wo, i, j, :] for i in range(k) for j in range(k))


class Conv(nn.Module):
    """Drop-in for `nn.Conv(features, (k, k), strides=(s, s), padding=...)` with the same
    parameter names, shapes and initialisers, plus the lowering choice `impl`."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Padding = "SAME"
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size[0]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv2d(x, kernel, self.strides[0], self.padding, self.impl) + bias
