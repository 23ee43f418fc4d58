"""Spatial broadcast decoder: each slot is painted on its own canvas, masks compete per pixel."""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from slot_jax.models.conv import Conv, example_chunk, in_batch_chunks, resolve_conv_impl
from slot_jax.models.layers import SoftPositionEmbed
from slot_jax.models.over_slots import mix_slots
from slot_jax.models.upsample import SubpixelConvTranspose

UPSAMPLE_IMPLS = ("auto", "transpose", "subpixel", "phases")


def resolve_upsample(impl: str, conv_impl: str = "auto", dtype: Any = jnp.float32) -> str:
    """'auto' keeps XLA's native transposed convolution where it is fast (GPU, TPU). On the CPU,
    where input-dilated convolutions are very slow, it computes phase by phase where the
    convolutions run on oneDNN in float32 (Slot Attention steps 1.19x faster at 64 px, 1.27x at
    128 px than sub-pixel on a 2-core CPU, README), and by one sub-pixel convolution elsewhere."""
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "transpose"
    # Channel counts do not enter resolve_conv_impl's choice of oneDNN.
    on_onednn = resolve_conv_impl(conv_impl, 1, 1, 1) == "onednn"
    return "phases" if on_onednn and jnp.dtype(dtype) == jnp.float32 else "subpixel"


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

    @nn.compact
    def __call__(self, slots: jnp.ndarray) -> dict:
        batch, num_slots, slot_size = slots.shape
        height, width = self.broadcast_size
        x = jnp.broadcast_to(slots.reshape(batch * num_slots, 1, 1, slot_size),
                             (batch * num_slots, height, width, slot_size))
        x = SoftPositionEmbed()(x)  # each convolution casts its input to `dtype`
        subpixel = functools.partial(SubpixelConvTranspose, conv_impl=self.conv_impl, dtype=self.dtype, relu=True)
        upsample = {"transpose": functools.partial(ConvTransposeReLU, dtype=self.dtype),
                    "subpixel": subpixel,
                    "phases": functools.partial(subpixel, by_phases=True),
                    }[resolve_upsample(self.upsample, self.conv_impl, self.dtype)]
        layers = []
        shapes = zip(self.channels, self.kernel_sizes, self.strides, strict=True)
        for i, (features, kernel, stride) in enumerate(shapes):
            if stride == 1:
                layers.append(Conv(features, (kernel, kernel), padding="SAME", impl=self.conv_impl, dtype=self.dtype,
                                   relu=True, name=f"conv_{i}"))
            else:  # named alike whatever the implementation, so checkpoints move between backends
                layers.append(upsample(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                                       name=f"conv_{i}"))
        k = self.output_kernel_size
        output = Conv(4, (k, k), padding="SAME", impl=self.conv_impl, dtype=self.dtype, name="output")

        def paint(x):
            for layer in layers:  # each ends in a ReLU
                x = layer(x)
            return output(x)

        x = in_batch_chunks(paint, self._chunk(x.shape[0]), x)
        x = x.astype(jnp.float32).reshape(batch, num_slots, *x.shape[1:])
        recon, masks = mix_slots(x)
        return {"recon": recon, "slot_images": x[..., :3], "masks": masks}
