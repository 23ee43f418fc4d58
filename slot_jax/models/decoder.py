"""Spatial broadcast decoder: each slot is painted on its own canvas, masks compete per pixel."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slot_jax import onednn
from slot_jax.models.conv import Conv, example_chunk, in_batch_chunks, resolve_conv_impl
from slot_jax.models.layers import SoftPositionEmbed
from slot_jax.models.over_slots import mix_slots
from slot_jax.models.upsample import SubpixelConvTranspose, conv_transpose_same_padding

UPSAMPLE_IMPLS = ("auto", "transpose", "subpixel", "phases")


def resolve_upsample(impl: str, conv_impl: str = "auto", dtype: Any = jnp.float32) -> str:
    """'auto' keeps XLA's native transposed convolution where it is fast (GPU, TPU). On the CPU,
    where input-dilated convolutions are very slow, it computes phase by phase where the
    convolutions run on oneDNN, in float32 or bfloat16 (float32 Slot Attention steps 1.19x faster
    at 64 px, 1.27x at 128 px than sub-pixel on a 2-core CPU, README), and by one sub-pixel
    convolution elsewhere."""
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "transpose"
    # Channel counts do not enter resolve_conv_impl's choice of oneDNN.
    on_onednn = resolve_conv_impl(conv_impl, 1, 1, 1) == "onednn"
    return "phases" if on_onednn and onednn.available(jnp.dtype(dtype).name) else "subpixel"


# Whether the first layer is computed from the slots' border classes (`first_layer_by_classes`;
# read at trace time, benchmarks turn it off to time the same step with the layer on every canvas).
FIRST_LAYER_BY_CLASSES = True


def layer_reach(kernel_size: int, stride: int) -> int:
    """How far, in input pixels, an output pixel of a 'SAME' layer reads from the input pixel it
    sits over (output // stride): k // 2 for a convolution; for a transposed convolution, whose
    y[s*q + r] = sum_t x[q + (r + t - before) / s] W[t] over the t that divide evenly, the
    largest such offset."""
    if stride == 1:
        return kernel_size // 2
    before, _ = conv_transpose_same_padding(kernel_size, stride)
    return max(abs(r + t - before) // stride for r in range(stride) for t in range(kernel_size)
               if (r + t - before) % stride == 0)


def border_classes(size: int, reach: int, stride: int) -> np.ndarray:
    """One-hot [stride * size, stride * (2 * reach + 1)]: which output pixel of a (2r+1)-pixel
    input each output pixel of a `size`-pixel input equals when the input is constant. Input pixel
    m sees the same zero padding as pixel m of the small input near the start, as the same pixel
    counted from the end near the end, and as its centre r everywhere else."""
    m = np.arange(size)
    small = np.where(m < reach, m, np.where(m >= size - reach, m - (size - 1 - 2 * reach), reach))
    rows = (stride * small[:, None] + np.arange(stride)[None, :]).ravel()
    return np.eye(stride * (2 * reach + 1), dtype=np.float32)[rows]


def first_layer_by_classes(layer, slots: jnp.ndarray, position: jnp.ndarray, reach: int, stride: int):
    """layer(broadcast(slots) + position) for a 'SAME', zero-padded, linear, translation-equivariant
    `layer` with a bias, without running it on each canvas. By linearity that is
    layer(position) + (the layer's linear part applied to each slot broadcast); the second term
    differs between output pixels only by the taps that fall on the padding, so it takes one value
    per border class (`border_classes`), computed on slots_size unit images of 2r+1 pixels.
    slots [B, D], position [H, W, D] -> [B, s*H, s*W, F]."""
    d = slots.shape[-1]
    m = 2 * reach + 1
    units = jnp.broadcast_to(jnp.eye(d + 1, d, dtype=slots.dtype)[:, None, None, :], (d + 1, m, m, d))
    on_units = layer(units)  # unit images, then a zero image: its output is the bias
    per_unit = on_units[:d] - on_units[d]
    on_position = layer(position[None])[0]
    height, width = position.shape[:2]
    rows = jnp.asarray(border_classes(height, reach, stride), per_unit.dtype)
    cols = jnp.asarray(border_classes(width, reach, stride), per_unit.dtype)
    small = jnp.einsum("bd,dijf->bijf", slots.astype(per_unit.dtype), per_unit)
    return jnp.einsum("bijf,pi,qj->bpqf", small, rows, cols) + on_position


class ConvTransposeReLU(nn.ConvTranspose):
    """flax's ConvTranspose followed by a ReLU, with its parameters."""

    def __call__(self, x):
        return nn.relu(super().__call__(x))


class SpatialBroadcastDecoder(nn.Module):
    """Broadcasts every slot to a `broadcast_size` grid and upsamples it with convolutions.

    Layers with stride > 1 are stride-s transposed convolutions (x s resolution); with all
    strides 1 and `broadcast_size` equal to the image size the slots are broadcast at full
    resolution, the cheap choice for small images. The last layer predicts RGB and a mask
    logit per slot; masks are a softmax over slots. The convolutions compute in `dtype`; the
    masks and the mixture are computed in float32.
    """

    broadcast_size: Sequence[int] = (8, 8)
    channels: Sequence[int] = (64, 64, 64, 64, 64)
    kernel_sizes: Sequence[int] = (5, 5, 5, 5, 5)
    strides: Sequence[int] = (2, 2, 2, 2, 1)
    output_kernel_size: int = 3
    upsample: str = "auto"  # see UPSAMPLE_IMPLS; all compute the same function with the same params
    conv_impl: str = "auto"  # lowering of every convolution, see slot_jax.models.conv.CONV_IMPLS
    dtype: Any = jnp.float32  # compute dtype of the convolutions; parameters stay float32
    # Canvases per chunk in which the convolutions run; 0: cache-sized chunks on a one-device CPU
    # (conv.batch_chunk), the whole batch elsewhere. Any choice computes the same function.
    batch_chunk: int = 0

    def output_size(self) -> tuple[int, int]:
        scale = 1
        for stride in self.strides:
            scale *= stride
        return (self.broadcast_size[0] * scale, self.broadcast_size[1] * scale)

    def _chunk(self, canvases: int) -> int:
        """Every canvas is painted alone, so chunks change no result. In chunks of about 8 MB of
        the widest layer's activations, a layer's output is still in cache when the next pass
        reads it: Slot Attention steps on a 2-core CPU ran up to 1.10x faster (README)."""
        height, width = self.output_size()
        widest = max((*self.channels, 4)) * jnp.dtype(self.dtype).itemsize
        return example_chunk(self.batch_chunk, canvases, height * width * widest)

    def _layer(self, i: int, relu: bool) -> nn.Module:
        """Layer i (stride 1: a convolution; else a transposed one, lowered as `upsample` picks),
        with a ReLU if `relu`; named alike whatever the lowering, so checkpoints move between
        backends."""
        features, kernel, stride = self.channels[i], self.kernel_sizes[i], self.strides[i]
        shape = dict(features=features, kernel_size=(kernel, kernel), padding="SAME", name=f"conv_{i}")
        if stride == 1:
            return Conv(**shape, impl=self.conv_impl, dtype=self.dtype, relu=relu)
        upsample = resolve_upsample(self.upsample, self.conv_impl, self.dtype)
        if upsample == "transpose":
            transpose = ConvTransposeReLU if relu else nn.ConvTranspose
            return transpose(**shape, strides=(stride, stride), dtype=self.dtype)
        return SubpixelConvTranspose(**shape, strides=(stride, stride), conv_impl=self.conv_impl, dtype=self.dtype,
                                     by_phases=upsample == "phases", relu=relu)

    @nn.compact
    def __call__(self, slots: jnp.ndarray) -> dict:
        batch, num_slots, slot_size = slots.shape
        height, width = self.broadcast_size
        if len({len(self.channels), len(self.kernel_sizes), len(self.strides)}) != 1:
            raise ValueError("decoder channels, kernel_sizes and strides need one entry per layer")
        reach = layer_reach(self.kernel_sizes[0], self.strides[0])
        by_classes = FIRST_LAYER_BY_CLASSES and min(height, width) >= 2 * reach + 1
        # by classes, the first layer's ReLU comes after the sum
        layers = [self._layer(i, relu=not (by_classes and i == 0)) for i in range(len(self.channels))]
        k = self.output_kernel_size
        output = Conv(4, (k, k), padding="SAME", impl=self.conv_impl, dtype=self.dtype, name="output")
        if by_classes:
            position = SoftPositionEmbed()(jnp.zeros((height, width, slot_size), slots.dtype))
            x = nn.relu(first_layer_by_classes(layers[0], slots.reshape(-1, slot_size), position, reach,
                                               self.strides[0]))
            layers = layers[1:]
        else:
            x = jnp.broadcast_to(slots.reshape(batch * num_slots, 1, 1, slot_size),
                                 (batch * num_slots, height, width, slot_size))
            x = SoftPositionEmbed()(x)  # each convolution casts its input to `dtype`

        def paint(x):
            for layer in layers:  # each ends in a ReLU
                x = layer(x)
            return output(x)

        x = in_batch_chunks(paint, self._chunk(x.shape[0]), x)
        x = x.astype(jnp.float32).reshape(batch, num_slots, *x.shape[1:])
        recon, masks = mix_slots(x)
        return {"recon": recon, "slot_images": x[..., :3], "masks": masks}
