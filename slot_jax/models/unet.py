"""Slot-conditioned denoising UNet (in the spirit of LSD and SlotDiffusion): a convolutional UNet
on latents whose attention blocks cross-attend from pixels to the slots."""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from slot_jax.errors import UserError
from slot_jax.models.attention import dot_product_attention
from slot_jax.models.blocks import (Downsample, ResBlock, Upsample, ZeroConv, check_divisible_size,
                                    check_group_norm_widths)
from slot_jax.models.conv import Conv, example_chunk, in_batch_chunks
from slot_jax.models.dense import mixed_dot_general
from slot_jax.models.norm import GroupNorm


def sinusoidal_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
    """t [B] (int or float) -> [B, dim]: cos(t * f_i) in the first half, sin(t * f_i) in the
    second, f_i = max_period ** (-i / (dim // 2)) for i < dim // 2; an odd dim gets a zero last
    column."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[:, None] * frequencies[None, :]
    embedding = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


class TimeEmbedding(nn.Module):
    """t [B] -> [B, features]: a `sinusoid_dim` sinusoidal embedding through a SiLU MLP."""

    sinusoid_dim: int
    features: int

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        x = sinusoidal_embedding(t, self.sinusoid_dim)
        x = nn.silu(nn.Dense(self.features, name="dense_in")(x))
        return nn.Dense(self.features, name="dense_out")(x)


class FeedForward(nn.Module):
    hidden: int
    dtype: Any = jnp.float32  # of the matmuls (slot_jax/models/dense.py)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dense = functools.partial(nn.Dense, dot_general=mixed_dot_general(self.dtype))
        h = nn.gelu(dense(self.hidden, name="dense_in")(x))
        return dense(x.shape[-1], name="dense_out")(h)


class SpatialTransformer(nn.Module):
    """x [B,h,w,C], slots [B,K,D] -> [B,h,w,C]: pixel self-attention, cross-attention from pixels
    to slots, feed-forward (pre-LayerNorm residuals), added to x through a zero-initialised
    projection. Slots carry no position, so the output is invariant to their order. The dense
    layers and the attention's projections compute in `dtype` with float32 results; the norms, the
    attention scores and softmax, and the residual sums stay float32."""

    num_heads: int = 4
    num_groups: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, slots: jnp.ndarray) -> jnp.ndarray:
        batch, height, width, channels = x.shape
        dot_general = mixed_dot_general(self.dtype)
        dense = functools.partial(nn.Dense, dot_general=dot_general)
        tokens = GroupNorm(self.num_groups, name="norm")(x).reshape(batch, height * width, channels)
        tokens = dense(channels, name="proj_in")(tokens)
        normed = nn.LayerNorm(name="norm_self")(tokens)
        attention = functools.partial(nn.MultiHeadDotProductAttention, self.num_heads,
                                      qkv_dot_general=dot_general, out_dot_general=dot_general,
                                      attention_fn=dot_product_attention)  # per backend, see attention.py
        tokens = tokens + attention(name="self_attn")(normed, normed)
        normed = nn.LayerNorm(name="norm_cross")(tokens)
        tokens = tokens + attention(name="cross_attn")(normed, slots)
        tokens = tokens + FeedForward(4 * channels, self.dtype, name="ff")(nn.LayerNorm(name="norm_ff")(tokens))
        out = dense(channels, kernel_init=nn.initializers.zeros, name="proj_out")(tokens)
        return x + out.reshape(x.shape)


class SlotUNet(nn.Module):
    """(x_t [B,h,w,C], t [B] int, slots [B,K,D]) -> prediction [B,h,w,out_channels or C].

    Level l runs at 1/2**l of the latent resolution with `channels * channel_mult[l]` channels;
    the levels in `attention_levels` and the middle block cross-attend to the slots. The output
    conv is zero-initialised, so the untrained network predicts 0.
    """

    channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: Sequence[int] = (1, 2)
    num_heads: int = 4
    num_groups: int = 8
    out_channels: Optional[int] = None  # None or 0: as many as x_t has
    conv_impl: str = "auto"
    # Compute dtype of the convolutions and dense layers (bfloat16: about 2x float32's speed with
    # AVX512_BF16); the norms, attention scores, residual sums and the output stay float32.
    # Parameters stay float32.
    dtype: Any = jnp.float32
    # Examples per chunk in which the network runs; 0: cache-sized chunks on a one-device CPU
    # (conv.batch_chunk), the whole batch elsewhere. Every example is denoised alone, so any
    # choice computes the same function.
    batch_chunk: int = 0

    def __post_init__(self):
        super().__post_init__()
        num_levels = len(self.channel_mult)
        if num_levels == 0:
            raise UserError("SlotUNet: channel_mult needs at least one entry (one per resolution level)")
        outside = [level for level in self.attention_levels if not 0 <= level < num_levels]
        if outside:
            raise UserError(f"SlotUNet: attention_levels {list(self.attention_levels)} must lie in "
                            f"0..{num_levels - 1} (one level per channel_mult entry)")
        widths = [self.channels] + [self.channels * m for m in self.channel_mult]
        check_group_norm_widths(widths, self.num_groups, "SlotUNet")
        attended = sorted({self.width(level) for level in [*self.attention_levels, num_levels - 1]})
        bad = [w for w in attended if w % self.num_heads]
        if self.num_heads < 1 or bad:
            raise UserError(f"SlotUNet: num_heads={self.num_heads} must divide the width of every "
                            f"attention block ({', '.join(map(str, attended))})")

    def width(self, level: int) -> int:
        return self.channels * self.channel_mult[level]

    @nn.compact
    def __call__(self, x_t: jnp.ndarray, t: jnp.ndarray, slots: jnp.ndarray) -> jnp.ndarray:
        num_levels = len(self.channel_mult)
        check_divisible_size(*x_t.shape[1:3], 2 ** (num_levels - 1), "SlotUNet")
        time_emb = TimeEmbedding(self.channels, 4 * self.channels, name="time_embedding")(t)
        made = {}

        def layer(name, make, *args, **fields):
            """The submodule `name`, made on first use, so that every batch chunk calls the same one."""
            if name not in made:
                made[name] = make(*args, **fields, name=name)
            return made[name]

        res_block = functools.partial(ResBlock, num_groups=self.num_groups, zero_init_last=True,
                                      conv_impl=self.conv_impl, dtype=self.dtype)
        attention_block = functools.partial(SpatialTransformer, self.num_heads, self.num_groups, self.dtype)

        def denoise(x_t, time_emb, slots):
            x = layer("conv_in", Conv, self.channels, (3, 3), impl=self.conv_impl, dtype=self.dtype)(x_t)
            x = x.astype(jnp.float32)
            skips = [x]
            for level in range(num_levels):
                for i in range(self.num_res_blocks):
                    x = layer(f"down_{level}_res_{i}", res_block, self.width(level))(x, time_emb)
                    if level in self.attention_levels:
                        x = layer(f"down_{level}_attn_{i}", attention_block)(x, slots)
                    skips.append(x)
                if level < num_levels - 1:
                    x = layer(f"down_{level}_downsample", Downsample, self.width(level), self.conv_impl,
                              self.dtype)(x).astype(jnp.float32)
                    skips.append(x)

            middle = self.width(num_levels - 1)
            x = layer("middle_res_0", res_block, middle)(x, time_emb)
            x = layer("middle_attn", attention_block)(x, slots)
            x = layer("middle_res_1", res_block, middle)(x, time_emb)

            for level in reversed(range(num_levels)):
                for i in range(self.num_res_blocks + 1):  # one more: also takes the level's entry skip
                    x = jnp.concatenate([x, skips.pop()], axis=-1)
                    x = layer(f"up_{level}_res_{i}", res_block, self.width(level))(x, time_emb)
                    if level in self.attention_levels:
                        x = layer(f"up_{level}_attn_{i}", attention_block)(x, slots)
                if level > 0:
                    x = layer(f"up_{level}_upsample", Upsample, self.width(level), self.conv_impl,
                              self.dtype)(x).astype(jnp.float32)

            x = nn.silu(layer("norm_out", GroupNorm, self.num_groups)(x))
            out_channels = self.out_channels or x_t.shape[-1]
            out = layer("conv_out", ZeroConv, out_channels, (3, 3), impl=self.conv_impl, dtype=self.dtype)(x)
            return out.astype(jnp.float32)

        return in_batch_chunks(denoise, self._chunk(x_t), x_t, time_emb, slots)

    def _chunk(self, x_t: jnp.ndarray) -> int:
        """In chunks of 16 examples the train step ran 1.06x faster at batch 32 on a 2-core CPU
        (README); the widest tensor, level 0's input with its skip, sets how many fit in CHUNK_BYTES."""
        batch, height, width, _ = x_t.shape
        return example_chunk(self.batch_chunk, batch, height * width * 2 * self.width(0) * x_t.dtype.itemsize)


def build_unet(unet_config, dtype: Any = jnp.float32) -> SlotUNet:
    """Builds the UNet from a config with the UNet's field names; `dtype`: the convolutions'."""
    c = unet_config
    return SlotUNet(channels=c.channels, channel_mult=tuple(c.channel_mult),
                    num_res_blocks=c.num_res_blocks, attention_levels=tuple(c.attention_levels),
                    num_heads=c.num_heads, num_groups=c.num_groups, out_channels=c.out_channels,
                    conv_impl=c.conv_impl, dtype=dtype)
