"""2-D convolution with a choice of lowering, all computing the same function as `lax.conv`.

XLA's YNNPACK convolutions on the CPU run far below its matmul speed, and worst in the weight
gradient. Two exact rewrites turn a convolution into one large matmul plus memory shuffles:

* `im2col`: gather the k*k input patches [N*Ho*Wo, k*k*C] once, multiply by the kernel. The
  patches are kept for the backward pass, which is two matmuls and a shifted sum (custom VJP,
  because the autodiff transpose of a gather is a slow scatter-add).
* `output_shift`: multiply every input pixel by all k*k taps at once, [N*H*W, C] @ [C, k*k*O],
  then add the k*k shifted slices. Cheaper than im2col when C > O, e.g. the RGB+mask output layer.

A third one, `phase_grad`, keeps XLA's forward and weight gradient of a strided convolution and
replaces its input gradient. That gradient is a transposed convolution, which XLA lowers as a
convolution over an input dilated with zeros; on the CPU this is 4-10x slower than the forward.
`phase_grad` computes it instead as one stride-1 convolution of the output gradient with s*s*C
outputs (one group per output phase) followed by depth-to-space, as `upsample.py` does.

A fourth, `swap_wgrad` (stride 1), keeps XLA's forward and input gradient and replaces its weight
gradient. XLA computes that gradient as a convolution whose batch is the input channels and
whose features are the images, so it first transposes the activations to images-innermost, a
strided gather over the layer's largest tensor. `swap_wgrad` convolves the output gradient with
the activations as the kernel instead, which only needs the (smaller) output gradient transposed
and the activations regrouped in whole channel vectors. It wins when C_out << C_in.

A fifth, `onednn`, runs the forward pass and the input gradient with oneDNN's convolution, which
jaxlib's XLA:CPU carries (slot_jax/onednn.py). In float32 it keeps XLA's weight gradient (or
swap_wgrad's), over chunks of the batch that fit in the cache (`batch_chunk`). In bfloat16,
where oneDNN's AVX512_BF16 kernels run twice as fast as float32 and XLA's do not, the weight
gradient of a stride-1 layer runs on oneDNN too, as a forward convolution with the images as
its input features (`weight_gradient_on_onednn`). It falls back to the choice below where oneDNN
cannot run (not float32 or bfloat16, negative padding, not the CPU, or its probe failed).

'auto' keeps XLA's native convolution off the CPU (GPU and TPU convolutions are fast). On a
one-device CPU with Eigen convolutions (slot_jax/xla_cpu.py) it picks `onednn` where the probe
passed. Otherwise, with Eigen convolutions, which beat both matmul rewrites, it picks
`phase_grad` for strided layers, `swap_wgrad` for strongly narrowing ones and native otherwise.
Only under YNNPACK convolutions does it pick a matmul rewrite by the layer's channel ratio
(`resolve_conv_impl`).
"""
import functools
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slot_jax import onednn, xla_cpu

CONV_IMPLS = ("auto", "native", "im2col", "output_shift", "phase_grad", "swap_wgrad", "onednn")
Padding = Union[str, Sequence[tuple[int, int]]]


def resolve_conv_impl(impl: str, c_in: int, c_out: int, stride: int, kernel_size: int = 3,
                      size: int = 0, allow_onednn: bool = True) -> str:
    """`size`: the input's smaller spatial side (0: unknown)."""
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "native"
    if xla_cpu.eigen_convolutions():
        if allow_onednn and onednn_by_default():
            return "onednn"
        # Forward + backward on a 2-core x86 CPU: 5x5 stride 2 at 64 px 2.8x faster, at 32 px 1.3x;
        # 3x3 stride 2 at 64-128 px 1.6-2.2x, at 8-32 px within +-15% of native either way.
        if stride > 1:
            return "phase_grad" if kernel_size >= 5 or size >= 64 else "native"
        # Forward + backward: 1.3-2.0x faster on RGB(+mask) output layers (64->3, 32->4), within
        # 0.87-1.04x of native on 2:1 narrowing layers, slower on widening ones.
        return "swap_wgrad" if 4 * c_out <= c_in else "native"
    # YNNPACK convolutions, measured on a 2-core x86 CPU (forward + backward): im2col wins on
    # widening layers (RGB inputs, sub-pixel upsampling with s*s*C outputs), output_shift on
    # strongly narrowing ones (the 4-channel RGB+mask output), XLA's own where C_in ~ C_out.
    if stride == 1 and 4 * c_out <= c_in and kernel_size <= 3:
        return "output_shift"
    if c_out >= 2 * c_in:
        return "im2col"
    return "native"


def onednn_by_default() -> bool:
    """'auto' calls oneDNN on a one-device CPU where the probe passed. With several devices the
    sharded train step would gather the whole batch onto each device for the custom call, which
    XLA cannot partition."""
    return jax.device_count() == 1 and onednn.available()


def _without_onednn(kernel_shape, stride: int, size: int) -> str:
    k, _, c, o = kernel_shape
    return resolve_conv_impl("auto", c, o, stride, k, size, allow_onednn=False)


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
           impl: str = "auto", bias: Optional[jnp.ndarray] = None, relu: bool = False) -> jnp.ndarray:
    """x [N, H, W, C], kernel [k, k, C, O] (HWIO) -> [N, Ho, Wo, O], as `lax.conv_general_dilated`,
    then `+ bias` ([O]) and a ReLU if given (on oneDNN inside the convolution, see `_conv_epilogue`)."""
    k = kernel.shape[0]
    if kernel.shape[1] != k:
        raise ValueError(f"square kernels only, got {kernel.shape[:2]}")
    pads = _paddings(x.shape, k, stride, padding)
    impl = resolve_conv_impl(impl, kernel.shape[2], kernel.shape[3], stride, k, min(x.shape[1:3]))
    if impl == "onednn" and onednn.usable(x, kernel, pads):
        if onednn.EPILOGUE and (bias is not None or relu):
            return _conv_epilogue(x, kernel, jnp.zeros(kernel.shape[3], x.dtype) if bias is None else bias,
                                  stride, pads, relu)
        return epilogue(_conv_onednn(x, kernel, stride, pads), bias, relu)
    if impl == "onednn":  # where oneDNN cannot run
        impl = _without_onednn(kernel.shape, stride, min(x.shape[1:3]))
    return epilogue(_conv2d(x, kernel, stride, pads, impl), bias, relu)


def epilogue(y, bias=None, relu: bool = False):
    """y + bias, then a ReLU, each where given."""
    y = y if bias is None else y + bias
    return jax.nn.relu(y) if relu else y


def _conv2d(x, kernel, stride: int, pads, impl: str):
    if impl in ("output_shift", "swap_wgrad") and stride != 1:
        raise ValueError(f"{impl} convolution supports stride 1 only")
    if impl == "native" or (impl == "phase_grad" and stride == 1):
        return native_conv(x, kernel, stride, pads)
    if impl in ("phase_grad", "swap_wgrad"):
        return _conv_own_gradient(x, kernel, stride, pads, impl)
    if impl == "im2col":
        return _conv_im2col(x, kernel, stride, pads)
    if impl == "output_shift":
        return _conv_output_shift(x, kernel, pads)
    raise ValueError(f"unknown convolution impl {impl!r}: choose one of {', '.join(CONV_IMPLS)}")


def native_conv(x, kernel, stride: int, pads):
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depth_to_space(x: jnp.ndarray, stride: int) -> jnp.ndarray:
    """[B, H, W, (s, s, C)] -> [B, H*s, W*s, C], phase (ry, rx) landing at (s*y + ry, s*x + rx)."""
    b, h, w, c = x.shape
    c_out = c // (stride * stride)
    x = x.reshape(b, h, w, stride, stride, c_out)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * stride, w * stride, c_out)


# ----------------------------------------------------------------------------- phase_grad, swap_wgrad

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_own_gradient(x, kernel, stride, pads, impl):
    return native_conv(x, kernel, stride, pads)


def _own_gradient_forward(x, kernel, stride, pads, impl):
    return native_conv(x, kernel, stride, pads), (x, kernel)


def _own_gradient_backward(stride, pads, impl, residuals, dy):
    """XLA's gradient for one argument; ours for the other: the input's for phase_grad, the
    kernel's for swap_wgrad."""
    x, kernel = residuals
    if impl == "phase_grad":
        _, weight_vjp = jax.vjp(lambda w: native_conv(x, w, stride, pads), kernel)
        return input_gradient_by_phases(dy, kernel, stride, pads, x.shape), weight_vjp(dy)[0]
    _, input_vjp = jax.vjp(lambda x: native_conv(x, kernel, stride, pads), x)
    return input_vjp(dy)[0], weight_gradient_swapped(x, dy, kernel.shape[0], pads)


_conv_own_gradient.defvjp(_own_gradient_forward, _own_gradient_backward)


def input_gradient_by_phases(dy, kernel, stride: int, pads, x_shape, conv=None):
    """d(conv(x, kernel, stride, pads))/dx applied to dy, without input dilation.

    In padded input coordinates u = s*q + r, per axis: dx_pad[u] = sum_a dy[q - a] W[s*a + r],
    a < A = ceil(k/s). With dy zero-padded by A-1 that is a stride-1 correlation whose tap b
    uses W[s*(A-1-b) + r]; all s*s phases r share it and become output channel groups.
    """
    k, _, c, o = kernel.shape
    taps = -(-k // stride)
    padded = jnp.pad(kernel, ((0, stride * taps - k), (0, stride * taps - k), (0, 0), (0, 0)))
    # padded[s*a + r] -> [a, r]; reverse a; phase kernel [b_y, b_x, O, (r_y, r_x, C)].
    phases = padded.reshape(taps, stride, taps, stride, c, o)[::-1, :, ::-1]
    phases = phases.transpose(0, 2, 5, 1, 3, 4).reshape(taps, taps, o, stride * stride * c)
    edge = taps - 1
    grad = (conv or native_conv)(dy, phases, 1, ((edge, edge), (edge, edge)))
    grad = depth_to_space(grad, stride)  # [N, s*(Ho+A-1), s*(Wo+A-1), C], padded input coordinates
    # Back to unpadded coordinates; negative padding crops, positive adds rows no output reached.
    (plh, _), (plw, _) = pads
    zero = jnp.zeros((), dy.dtype)
    return lax.pad(grad, zero, ((0, 0, 0),
                                (-plh, plh + x_shape[1] - grad.shape[1], 0),
                                (-plw, plw + x_shape[2] - grad.shape[2], 0),
                                (0, 0, 0)))


def weight_gradient_swapped(x, dy, k: int, pads):
    """dW[i, j] = sum_{n,h,w} xpad[n, h+i, w+j] dy[n, h, w] of a stride-1 convolution, computed as a
    convolution over images-as-features with dy as the input and x as the kernel:
    out[o, i', j', c] = sum dypad[n, i'+u, j'+v, o] x[n, u, v, c], tap i = k-1-i'."""
    (top, bottom), (left, right) = pads
    edges = [(k - 1 - top, k - 1 - bottom), (k - 1 - left, k - 1 - right)]
    dy, edges = crop_negative_padding(dy, edges)
    out = lax.conv_general_dilated(dy, x, (1, 1), edges, dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return out[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


# ----------------------------------------------------------------------------- onednn

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_onednn(x, kernel, stride, pads):
    return onednn.conv(x, kernel, stride, pads)


def _onednn_forward(x, kernel, stride, pads):
    return onednn.conv(x, kernel, stride, pads), (x, kernel)


def _onednn_backward(stride, pads, residuals, dy):
    """oneDNN for the input gradient, a convolution of dy with the flipped kernel (by phases when
    strided); XLA's weight gradient, or swap_wgrad's where that wins: oneDNN's forward
    convolution cannot compute it (as a convolution its kernel would be the whole image)."""
    x, kernel = residuals
    k = kernel.shape[0]
    if stride == 1:
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        dy_cropped, back = crop_negative_padding(dy, [(k - 1 - lo, k - 1 - hi) for lo, hi in pads])
        dx = onednn.conv(dy_cropped, flipped, 1, back)
    else:
        dx = input_gradient_by_phases(dy, kernel, stride, pads, x.shape, conv=onednn.conv)
    if stride == 1 and weight_gradient_on_onednn_pays(x.dtype, *kernel.shape[2:]):
        return dx, weight_gradient_on_onednn(x, dy, pads)
    swapped = _without_onednn(kernel.shape, stride, min(x.shape[1:3])) == "swap_wgrad"
    # XLA computes a weight gradient as a convolution with the images innermost, so it first
    # transposes the layer's input and output gradient: strided copies of its largest tensors. In
    # chunks, each copy is still in cache when the convolution reads it (1.03-1.16x faster
    # Slot Attention steps, benchmarks/batch_chunks.py).
    chunk = batch_chunk(x.shape[0], (x[0].size + dy[0].size) * x.dtype.itemsize)
    return dx, weight_gradient_by_chunks(x, dy, kernel, stride, pads, chunk, swapped)


# Batch chunks that stay in cache, measured on a 2-core x86 CPU with a 32 MB L3 (see batch_chunk).
CHUNK_BYTES = 8 << 20
MIN_CHUNK, MAX_CHUNK = 8, 16


def batch_chunk(batch: int, image_bytes: int) -> int:
    """Images per chunk when a batch is processed chunk by chunk to stay in cache: about
    CHUNK_BYTES of tensors per chunk, MIN_CHUNK to MAX_CHUNK images, the chunks as even as one
    size allows (the last may be smaller); the whole batch when that would leave one chunk.
    Chunks of fewer than 8 images made Eigen's weight-gradient convolution itself slower (a
    64x64, 32->4 layer: 5x at one image per chunk), and a UNet step 1.07-1.2x slower."""
    chunk = min(max(MIN_CHUNK, CHUNK_BYTES // max(image_bytes, 1)), MAX_CHUNK)
    if 2 * chunk > batch:
        return batch
    count = -(-batch // chunk)
    return -(-batch // count)


def chunks_pay() -> bool:
    """Whether to process batches in cache-sized chunks: on a one-device CPU, where each XLA op
    streams its whole tensors through memory. Elsewhere the batch is split over devices, or the
    device is a GPU or TPU that wants large ops."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def example_chunk(requested: int, batch: int, example_bytes: int) -> int:
    """A module's chunk size: `requested` if set, else batch_chunk where chunks pay, else the batch."""
    if requested:
        return requested
    return batch_chunk(batch, example_bytes) if chunks_pay() else batch


def chunk_slices(batch: int, chunk: int) -> list[slice]:
    return [slice(start, start + chunk) for start in range(0, batch, chunk)]


def in_batch_chunks(fn, chunk: int, *arrays):
    """fn(*arrays) for functions of each example alone, computed over batch chunks of `chunk`
    examples; its outputs (arrays or pytrees of them) are concatenated."""
    batch = arrays[0].shape[0]
    if chunk >= batch:
        return fn(*arrays)
    parts = [fn(*(a[part] for a in arrays)) for part in chunk_slices(batch, chunk)]
    return jax.tree.map(lambda *pieces: jnp.concatenate(pieces), *parts)


def weight_gradient_by_chunks(x, dy, kernel, stride: int, pads, chunk: int, swapped: bool = False):
    """The weight gradient summed over batch chunks of `chunk` images (the last may be smaller);
    swap_wgrad's formulation (stride 1) when `swapped`, XLA's own otherwise."""
    def gradient(x, dy):
        if swapped:
            return weight_gradient_swapped(x, dy, kernel.shape[0], pads)
        return jax.vjp(lambda w: native_conv(x, w, stride, pads), kernel)[1](dy)[0]

    parts = [gradient(x[part], dy[part]) for part in chunk_slices(x.shape[0], chunk)]
    return functools.reduce(jnp.add, parts)


_conv_onednn.defvjp(_onednn_forward, _onednn_backward)

# Whether bfloat16 weight gradients of stride-1 layers run on oneDNN (read at trace time;
# benchmarks turn it off to time the same step with XLA's).
ONEDNN_WEIGHT_GRADIENT = True
# Image pixels per chunk of that gradient (its reduction length), and the fewest images: on a
# 2-core AVX512_BF16 CPU, 5x5 layers ran fastest at 8 images of 64x64 (302 GFLOP/s against 227 at
# 4 and 282 at 16), 4 of 128x128 (316 against 273 at 8; 1.2x faster than 2) and 32 of 32x32 (356
# against 284 at 8), 1.5-2x XLA's bfloat16 weight gradient.
WEIGHT_GRADIENT_PIXELS = 1 << 15
WEIGHT_GRADIENT_MIN_IMAGES = 4


def weight_gradient_on_onednn_pays(dtype, c_in: int, c_out: int) -> bool:
    """In bfloat16 only oneDNN's weight gradient uses the bf16 dot products, except on strongly
    narrowing layers, where XLA's in swap_wgrad's form won (the RGB+mask output layers: 32->4 at
    64 px 60 against 30 GFLOP/s, 64->4 at 128 px 84 against 22). In float32 oneDNN's ran at
    0.9-1.2x XLA's on 5x5 layers, depending on the chunk, so float32 keeps XLA's."""
    return ONEDNN_WEIGHT_GRADIENT and dtype == jnp.bfloat16 and 4 * c_out > c_in


def onednn_weight_gradient_chunk(batch: int, pixels: int) -> int:
    """Images per chunk of `weight_gradient_on_onednn` for images of `pixels` pixels."""
    return min(max(WEIGHT_GRADIENT_MIN_IMAGES, round(WEIGHT_GRADIENT_PIXELS / pixels)), batch)


def weight_gradient_on_onednn(x, dy, pads, out_dtype=None):
    """dW of a stride-1 convolution with padding `pads` (>= 0), dW[i, j, c, o] =
    sum_{n,h,w} xpad[n, h+i, w+j, c] dy[n, h, w, o]: itself a forward convolution of x, with x's
    channels as the batch and its images as the input features, by dy as the kernel (whole
    output images as its window). Accumulated in float32 over batch chunks of about
    WEIGHT_GRADIENT_PIXELS pixels (at least WEIGHT_GRADIENT_MIN_IMAGES images); returned in
    `out_dtype` (default x's)."""
    chunk = onednn_weight_gradient_chunk(x.shape[0], dy.shape[1] * dy.shape[2])
    parts = [onednn.conv(x[part].transpose(3, 1, 2, 0), dy[part].transpose(1, 2, 0, 3), 1, pads,
                         out_dtype=jnp.float32)  # [C, kh, kw, O]
             for part in chunk_slices(x.shape[0], chunk)]
    return functools.reduce(jnp.add, parts).transpose(1, 2, 0, 3).astype(out_dtype or x.dtype)


# Bias and ReLU as oneDNN post-ops: applied to each output tile while it is in registers, which
# saves XLA's separate pass over the layer's output (read and written once more) in the forward.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_epilogue(x, kernel, bias, stride, pads, relu):
    return onednn.conv(x, kernel, stride, pads, bias, relu)


def _epilogue_forward(x, kernel, bias, stride, pads, relu):
    y = onednn.conv(x, kernel, stride, pads, bias, relu)
    return y, (x, kernel, y if relu else None)


def _epilogue_backward(stride, pads, relu, residuals, dy):
    x, kernel, y = residuals
    dz, d_bias = epilogue_gradient(dy, y)
    return (*_onednn_backward(stride, pads, (x, kernel), dz), d_bias)


def epilogue_gradient(dy, relu_output=None):
    """For y = relu(z + b) (no ReLU when `relu_output` is None): the gradients of z and of b.
    y > 0 exactly where z + b > 0, and jax.nn.relu's gradient at 0 is 0, as here."""
    dz = dy if relu_output is None else jnp.where(relu_output > 0, dy, jnp.zeros((), dy.dtype))
    return dz, dz.sum(axis=(0, 1, 2))


_conv_epilogue.defvjp(_epilogue_forward, _epilogue_backward)


def crop_negative_padding(dy, edges):
    """Splits the spatial padding `edges` of a convolution over dy into a crop of dy (its negative
    parts) and the padding left (>= 0). Negative edges come from a layer padded wider than its
    kernel, whose border rows met only padding. They are cropped apart because XLA:CPU's
    convolution with negative padding reads garbage (jax 0.10.2), and oneDNN's takes none."""
    crops = [(min(lo, 0), min(hi, 0), 0) for lo, hi in edges]
    cropped = lax.pad(dy, jnp.zeros((), dy.dtype), [(0, 0, 0), *crops, (0, 0, 0)])
    return cropped, [(max(lo, 0), max(hi, 0)) for lo, hi in edges]


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
    parameter names, shapes and initialisers, plus the lowering choice `impl`. As in flax,
    `dtype` is the compute dtype (None: the input's); parameters stay float32."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Padding = "SAME"
    impl: str = "auto"
    dtype: Optional[Any] = None
    relu: bool = False  # a ReLU after the bias, fused into oneDNN's convolution where it runs

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size[0]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = cast_to(self.dtype, x, kernel, bias)
        return conv2d(x, kernel, self.strides[0], self.padding, self.impl, bias, self.relu)


def cast_to(dtype, *arrays):
    """The arrays in `dtype` (unchanged when it is None)."""
    return arrays if dtype is None else tuple(a.astype(dtype) for a in arrays)
