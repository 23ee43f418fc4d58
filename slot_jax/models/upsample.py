"""Strided transposed convolution without input dilation, in two exact formulations.

A stride-s transposed convolution writes each output phase (o mod s) from a fixed subset of the
kernel taps, so the s*s phases are ordinary stride-1 convolutions of the *undilated* input.

- `conv_transpose_subpixel` stacks the phase kernels along the output channels (zero taps where a
  phase has fewer) into one convolution with s*s*C outputs, followed by depth-to-space.
- `conv_transpose_by_phases` runs each phase with only its own taps (k=5, s=2: 25 instead of 36
  per output pixel) and writes its backward pass out: the input gradient is the stride-s
  convolution of the output gradient with the flipped kernel, so no pass shuffles the output
  gradient into phases, and the kernel gradient is each phase's stride-1 weight gradient.

Both compute exactly what `flax.linen.ConvTranspose` (no kernel flip) computes, with none of the
input-dilated convolutions that XLA's CPU backend runs slowly.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slot_jax import onednn
from slot_jax.models.conv import (
    cast_to, chunk_slices, conv2d, crop_negative_padding, depth_to_space, epilogue, epilogue_gradient, example_chunk,
    native_conv, onednn_weight_gradient_chunk, resolve_conv_impl, weight_gradient_by_chunks,
    weight_gradient_on_onednn, weight_gradient_on_onednn_pays)


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


def phase_windows(kernel_size: int, stride: int):
    """Per phase (the same along both axes): the kernel taps it uses, in input order, and the
    (before, after) padding of the stride-1 convolution that computes it. None where some phase
    gets no tap (k < s) or would need negative padding; those layers stay sub-pixel."""
    pad_before, _ = conv_transpose_same_padding(kernel_size, stride)
    windows = []
    for taps in _phase_taps(kernel_size, stride, pad_before):
        offsets = sorted(taps)  # consecutive input offsets, one per tap
        if not offsets or offsets[0] > 0 or offsets[-1] < 0:
            return None
        windows.append((np.array([taps[d] for d in offsets]), (-offsets[0], offsets[-1])))
    return windows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _by_phases(x, kernel, bias, stride, use_onednn, relu):
    """The transposed convolution, + bias, and a ReLU if `relu`: on oneDNN both inside each
    phase's convolution (conv.py, `_conv_epilogue`)."""
    windows = phase_windows(kernel.shape[0], stride)
    conv = functools.partial(onednn.conv, bias=bias, relu=relu) if use_onednn else native_conv
    phases = [conv(x, kernel[taps_y][:, taps_x], 1, (pads_y, pads_x))
              for taps_y, pads_y in windows for taps_x, pads_x in windows]
    # Output pixel (s*h + ry, s*w + rx) is phase (ry, rx)'s pixel (h, w). One stack and one
    # transpose interleave them: nested stacks (rows, then columns) took about 8% more of the
    # small64 step's CPU time, their outer concatenation being slow inside the step.
    n, h, w, c = phases[0].shape
    y = jnp.stack(phases).reshape(stride, stride, n, h, w, c).transpose(2, 3, 0, 4, 1, 5)
    y = y.reshape(n, h * stride, w * stride, c)
    return y if use_onednn else epilogue(y, bias, relu)


def _by_phases_forward(x, kernel, bias, stride, use_onednn, relu):
    y = _by_phases(x, kernel, bias, stride, use_onednn, relu)
    return y, (x, kernel, y if relu else None, bias)


def _by_phases_backward(stride, use_onednn, relu, residuals, dy):
    """y[p] = sum_t x[(p + t - before) / s] W[t] over the t that divide evenly, so
    dx[m] = sum_u dy[s*m + u - lo] W[k-1-u]^T with lo = k-1-before: a stride-s convolution of dy
    with the flipped kernel. The kernel's gradient is that convolution's weight gradient, computed
    phase by phase (`weight_gradient_by_phases`) unless WEIGHT_GRADIENT_BY_PHASES is off."""
    x, kernel, y, bias = residuals
    dy, d_bias = epilogue_gradient(dy, y)
    d_bias = None if bias is None else d_bias
    k = kernel.shape[0]
    before, _ = conv_transpose_same_padding(k, stride)
    lo = k - 1 - before
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [k, k, C_out, C_in]
    cropped, pads = crop_negative_padding(dy, [(lo, k - lo - stride)] * 2)
    dx = (onednn.conv if use_onednn else native_conv)(cropped, flipped, stride, pads)
    if WEIGHT_GRADIENT_BY_PHASES and use_onednn and weight_gradient_on_onednn_pays(x.dtype, *kernel.shape[2:]):
        chunk = onednn_weight_gradient_chunk(x.shape[0], x.shape[1] * x.shape[2])
        return dx, weight_gradient_by_phases(x, dy, k, stride, chunk, on_onednn=True), d_bias
    chunk = example_chunk(0, x.shape[0], (x[0].size + dy[0].size) * x.dtype.itemsize)
    if WEIGHT_GRADIENT_BY_PHASES:
        return dx, weight_gradient_by_phases(x, dy, k, stride, chunk), d_bias
    d_flipped = weight_gradient_by_chunks(cropped, x, flipped, stride, pads, chunk)
    return dx, jnp.flip(d_flipped, (0, 1)).transpose(0, 1, 3, 2), d_bias


_by_phases.defvjp(_by_phases_forward, _by_phases_backward)

# Whether the kernel gradient is computed phase by phase (read at trace time; benchmarks turn it
# off to time the same step with XLA's weight gradient of the strided convolution, whose
# window-dilated kernel XLA:CPU runs 1.2-1.5x slower on the 5x5 decoder layers).
WEIGHT_GRADIENT_BY_PHASES = True


def weight_gradient_by_phases(x, dy, kernel_size: int, stride: int, chunk: int, on_onednn: bool = False):
    """The kernel gradient of the transposed convolution, phase by phase: the taps of phase
    (ry, rx) get the weight gradient of that phase's stride-1 convolution of x, whose output
    gradient is dy[:, ry::s, rx::s]. Summed over batch chunks of `chunk`, each phase's gradient
    on oneDNN (`weight_gradient_on_onednn`, float32 sums) if `on_onednn`, else XLA's."""
    windows = phase_windows(kernel_size, stride)
    c_in, c_out = x.shape[3], dy.shape[3]

    def phase_gradients(x, dy):
        grads = []
        for ry, (taps_y, pads_y) in enumerate(windows):
            for rx, (taps_x, pads_x) in enumerate(windows):
                dy_phase = dy[:, ry::stride, rx::stride]
                if on_onednn:
                    grad = weight_gradient_on_onednn(x, dy_phase, (pads_y, pads_x), jnp.float32)
                else:
                    zero = jnp.zeros((len(taps_y), len(taps_x), c_in, c_out), x.dtype)
                    _, vjp = jax.vjp(lambda w: native_conv(x, w, 1, (pads_y, pads_x)), zero)
                    grad = vjp(dy_phase)[0]
                grads.append(grad.reshape(-1, c_in, c_out))
        return jnp.concatenate(grads)

    parts = [phase_gradients(x[part], dy[part]) for part in chunk_slices(x.shape[0], chunk)]
    flat = functools.reduce(jnp.add, parts)  # [taps, C_in, C_out], phase after phase
    tap_order = np.concatenate([(taps_y[:, None] * kernel_size + taps_x[None, :]).ravel()
                                for taps_y, _ in windows for taps_x, _ in windows])
    return flat[np.argsort(tap_order)].reshape(kernel_size, kernel_size, c_in, c_out).astype(x.dtype)


def conv_transpose_by_phases(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: str = "SAME",
                             conv_impl: str = "auto", bias: Optional[jnp.ndarray] = None, relu: bool = False):
    """The transposed convolution phase by phase (then `+ bias` and a ReLU, where given), on
    oneDNN where `conv_impl` resolves to it (and oneDNN can run it), on XLA's convolutions
    otherwise; sub-pixel where `phase_windows` refuses."""
    k = kernel.shape[0]
    if padding != "SAME" or kernel.shape[1] != k or phase_windows(k, stride) is None:
        return epilogue(conv_transpose_subpixel(x, kernel, stride, padding, conv_impl), bias, relu)
    kernel = kernel.astype(x.dtype)
    use_onednn = (resolve_conv_impl(conv_impl, kernel.shape[2], kernel.shape[3], 1, k, min(x.shape[1:3])) == "onednn"
                  and onednn.usable(x, kernel, ((0, 0), (0, 0))))
    if use_onednn and onednn.EPILOGUE:
        return _by_phases(x, kernel, None if bias is None else bias.astype(x.dtype), stride, True, relu)
    return epilogue(_by_phases(x, kernel, None, stride, use_onednn, False), bias, relu)


class SubpixelConvTranspose(nn.Module):
    """Drop-in for `nn.ConvTranspose(features, (k, k), strides=(s, s), padding="SAME")`, with the
    same parameter names and shapes, so checkpoints move freely between the two. `by_phases`
    picks `conv_transpose_by_phases` over one sub-pixel convolution; both compute the same."""

    features: int
    kernel_size: tuple
    strides: tuple
    padding: str = "SAME"
    conv_impl: str = "auto"  # lowering of the inner convolution, see slot_jax.models.conv
    dtype: Optional[Any] = None  # compute dtype, as in flax (None: the input's)
    by_phases: bool = False
    relu: bool = False  # a ReLU after the bias (by phases on oneDNN: inside its convolutions)

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size[0]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = cast_to(self.dtype, x, kernel, bias)
        if self.by_phases:
            return conv_transpose_by_phases(x, kernel, self.strides[0], self.padding, self.conv_impl, bias, self.relu)
        return epilogue(conv_transpose_subpixel(x, kernel, self.strides[0], self.padding, self.conv_impl),
                        bias, self.relu)
