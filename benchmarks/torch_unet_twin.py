"""A PyTorch eager twin of slot_jax's slot-conditioned UNet (slot_jax.models.unet.SlotUNet), for
speed comparisons.

Same layers, shapes and order as the Flax module, in NCHW: conv_in; ResBlocks (GroupNorm, SiLU,
conv3x3, + projected time embedding, GroupNorm, SiLU, zero-init conv3x3, 1x1 skip when the width
changes); stride-2 conv3x3 downsampling padded as 'SAME' (one row/column after); nearest-neighbour
upsampling + conv3x3; SpatialTransformers (GroupNorm, Linear proj_in, pre-LayerNorm self-attention,
cross-attention to the slots, tanh-GELU feed-forward, zero-init Linear proj_out, residual); a
sinusoidal time embedding through a SiLU MLP; GroupNorm, SiLU and a zero-init conv_out.
Submodules carry the Flax names, so `load_flax_params` copies a Flax parameter tree in and the
twin then computes the same function (tests/models/test_torch_unet_twin.py checks it), which is
what makes the speed comparison in benchmarks/diffusion_speed.py a fair one.

Importing this module does not import jax; `load_flax_params` takes any tree of arrays.
"""
import math
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_twin import init_like_flax  # noqa: E402  (LeCun-normal kernels, zero biases)

EPS = 1e-6  # flax's GroupNorm and LayerNorm epsilon


def _group_norm(num_groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=EPS)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    module._flax_zero_init = True
    return module


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """As slot_jax.models.unet.sinusoidal_embedding: [cos(t f_i), sin(t f_i)], odd dim zero-padded."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


class TimeEmbedding(nn.Module):
    def __init__(self, sinusoid_dim: int, features: int):
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.dense_in = nn.Linear(sinusoid_dim, features)
        self.dense_out = nn.Linear(features, features)

    def forward(self, t):
        return self.dense_out(F.silu(self.dense_in(sinusoidal_embedding(t, self.sinusoid_dim))))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, features: int, time_dim: int, num_groups: int):
        super().__init__()
        self.norm_in = _group_norm(num_groups, c_in)
        self.conv_in = nn.Conv2d(c_in, features, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, features)
        self.norm_out = _group_norm(num_groups, features)
        self.conv_out = _zero_(nn.Conv2d(features, features, 3, padding=1))
        self.skip = nn.Conv2d(c_in, features, 1) if c_in != features else None

    def forward(self, x, time_emb):
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = h + self.time_proj(F.silu(time_emb))[:, :, None, None]
        h = self.conv_out(F.silu(self.norm_out(h)))
        return (x if self.skip is None else self.skip(x)) + h


def _same_pads(size: int, k: int = 3, stride: int = 2):
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class Downsample(nn.Module):
    def __init__(self, channels: int, features: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, features, 3, stride=2)

    def forward(self, x):
        (top, bottom), (left, right) = _same_pads(x.shape[2]), _same_pads(x.shape[3])
        return self.conv(F.pad(x, (left, right, top, bottom)))


class Upsample(nn.Module):
    def __init__(self, channels: int, features: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, features, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Attention(nn.Module):
    """flax.linen.MultiHeadDotProductAttention with qkv_features = out_features = the query width."""

    def __init__(self, q_dim: int, kv_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(q_dim, q_dim)
        self.key = nn.Linear(kv_dim, q_dim)
        self.value = nn.Linear(kv_dim, q_dim)
        self.out = nn.Linear(q_dim, q_dim)

    def forward(self, x, context):
        b, n, c = x.shape
        heads = lambda y: y.reshape(b, y.shape[1], self.num_heads, c // self.num_heads).transpose(1, 2)
        q, k, v = heads(self.query(x)), heads(self.key(context)), heads(self.value(context))
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class FeedForward(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.dense_in = nn.Linear(channels, hidden)
        self.dense_out = nn.Linear(hidden, channels)

    def forward(self, x):
        return self.dense_out(F.gelu(self.dense_in(x), approximate="tanh"))  # jax.nn.gelu's default


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, slot_size: int, num_heads: int, num_groups: int):
        super().__init__()
        self.norm = _group_norm(num_groups, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.norm_self = nn.LayerNorm(channels, eps=EPS)
        self.self_attn = Attention(channels, channels, num_heads)
        self.norm_cross = nn.LayerNorm(channels, eps=EPS)
        self.cross_attn = Attention(channels, slot_size, num_heads)
        self.norm_ff = nn.LayerNorm(channels, eps=EPS)
        self.ff = FeedForward(channels, 4 * channels)
        self.proj_out = _zero_(nn.Linear(channels, channels))

    def forward(self, x, slots):
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # [B, h*w, C], row-major
        normed = self.norm_self(tokens)
        tokens = tokens + self.self_attn(normed, normed)
        tokens = tokens + self.cross_attn(self.norm_cross(tokens), slots)
        tokens = tokens + self.ff(self.norm_ff(tokens))
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)


class TorchSlotUNet(nn.Module):
    """(x_t [B,C,h,w], t [B] int, slots [B,K,D]) -> [B,out_channels or C,h,w]; the arguments after
    `slot_size` are SlotUNet's (conv_impl has no counterpart)."""

    def __init__(self, in_channels: int, slot_size: int, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (1, 2), num_heads: int = 4, num_groups: int = 8,
                 out_channels: Optional[int] = None):
        super().__init__()
        self.channel_mult, self.num_res_blocks = tuple(channel_mult), num_res_blocks
        self.attention_levels = tuple(attention_levels)
        num_levels = len(channel_mult)
        width = lambda level: channels * channel_mult[level]
        time_dim = 4 * channels
        res = lambda name, c_in, c_out: self.add_module(name, ResBlock(c_in, c_out, time_dim, num_groups))
        attn = lambda name, c: self.add_module(name, SpatialTransformer(c, slot_size, num_heads, num_groups))

        self.time_embedding = TimeEmbedding(channels, time_dim)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        skips, c = [channels], channels
        for level in range(num_levels):
            for i in range(num_res_blocks):
                res(f"down_{level}_res_{i}", c, width(level))
                c = width(level)
                if level in self.attention_levels:
                    attn(f"down_{level}_attn_{i}", c)
                skips.append(c)
            if level < num_levels - 1:
                self.add_module(f"down_{level}_downsample", Downsample(c, c))
                skips.append(c)
        middle = width(num_levels - 1)
        res("middle_res_0", c, middle)
        attn("middle_attn", middle)
        res("middle_res_1", middle, middle)
        c = middle
        for level in reversed(range(num_levels)):
            for i in range(num_res_blocks + 1):
                res(f"up_{level}_res_{i}", c + skips.pop(), width(level))
                c = width(level)
                if level in self.attention_levels:
                    attn(f"up_{level}_attn_{i}", c)
            if level > 0:
                self.add_module(f"up_{level}_upsample", Upsample(c, c))
        self.norm_out = _group_norm(num_groups, c)
        self.conv_out = _zero_(nn.Conv2d(c, out_channels or in_channels, 3, padding=1))
        init_like_flax(self)
        for m in self.modules():  # init_like_flax re-drew them
            if getattr(m, "_flax_zero_init", False):
                _zero_(m)

    def forward(self, x_t, t, slots):
        num_levels = len(self.channel_mult)
        block = lambda name: getattr(self, name)
        time_emb = self.time_embedding(t)
        x = self.conv_in(x_t)
        skips = [x]
        for level in range(num_levels):
            for i in range(self.num_res_blocks):
                x = block(f"down_{level}_res_{i}")(x, time_emb)
                if level in self.attention_levels:
                    x = block(f"down_{level}_attn_{i}")(x, slots)
                skips.append(x)
            if level < num_levels - 1:
                x = block(f"down_{level}_downsample")(x)
                skips.append(x)
        x = self.middle_res_0(x, time_emb)
        x = self.middle_attn(x, slots)
        x = self.middle_res_1(x, time_emb)
        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                x = block(f"up_{level}_res_{i}")(torch.cat([x, skips.pop()], dim=1), time_emb)
                if level in self.attention_levels:
                    x = block(f"up_{level}_attn_{i}")(x, slots)
            if level > 0:
                x = block(f"up_{level}_upsample")(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def from_config(unet_config, in_channels: int, slot_size: int) -> TorchSlotUNet:
    """The twin of slot_jax.models.unet.build_unet(unet_config)."""
    c = unet_config
    return TorchSlotUNet(in_channels, slot_size, channels=c.channels, channel_mult=tuple(c.channel_mult),
                         num_res_blocks=c.num_res_blocks, attention_levels=tuple(c.attention_levels),
                         num_heads=c.num_heads, num_groups=c.num_groups, out_channels=c.out_channels or None)


def _torch_tensors(module: nn.Module, name: str, leaves: dict) -> dict:
    """Flax leaves of the layer `name` ({kernel, bias} or {scale, bias}) -> {torch parameter: array}."""
    out = {}
    if "kernel" in leaves:
        kernel = leaves["kernel"]
        if isinstance(module, nn.Conv2d):
            out["weight"] = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif kernel.ndim == 3 and name != "out":
            out["weight"] = kernel.reshape(kernel.shape[0], -1).T  # attention q/k/v: [in, heads, head_dim]
        else:
            # dense [in, out]; attention out [heads, head_dim, out]
            out["weight"] = kernel.reshape(-1, kernel.shape[-1]).T
    if "scale" in leaves:
        out["weight"] = leaves["scale"]
    if "bias" in leaves:
        out["bias"] = leaves["bias"].reshape(-1)
    return out


def load_flax_params(module: TorchSlotUNet, params) -> None:
    """Copies a SlotUNet parameter tree (`variables["params"]`) into the twin, in place; every
    parameter of the twin must be set exactly once, with its own shape."""
    assigned = set()

    def walk(tree, prefix):
        if "kernel" in tree or "scale" in tree:
            layer = module.get_submodule(".".join(prefix))
            leaves = {k: np.asarray(v) for k, v in tree.items()}
            for name, array in _torch_tensors(layer, prefix[-1], leaves).items():
                target = getattr(layer, name)
                if tuple(array.shape) != tuple(target.shape):
                    raise ValueError(f"{'.'.join(prefix)}.{name}: flax {array.shape} vs torch {tuple(target.shape)}")
                with torch.no_grad():
                    target.copy_(torch.tensor(np.asarray(array, dtype=np.float32)))
                assigned.add(".".join(prefix + (name,)))
            return
        for key, value in tree.items():
            walk(value, prefix + (key,))

    walk(params, ())
    missing = sorted(set(dict(module.named_parameters())) - assigned)
    if missing:
        raise ValueError(f"torch parameters without a flax counterpart: {missing}")


def alphas_cumprod(kind: str, num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """slot_jax.models.diffusion.make_schedule(...).alphas_cumprod for the "linear" and
    "sqrt_linear" kinds, without importing jax (float64 cumulative product, float32 result)."""
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    elif kind == "sqrt_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"schedule {kind!r} has no torch twin here; use linear or sqrt_linear")
    return torch.cumprod(1 - betas, 0).to(torch.float32)
