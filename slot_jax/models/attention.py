"""Dot-product attention for the UNet's attention blocks, lowered per backend.

On the CPU, flax's `dot_product_attention` materialises the scores of the whole batch, e.g.
32 x 4 heads x 256 x 256 floats (33 MB) for the report UNet's self-attention at 16x16, and its
backward pass walks through them several more times. `per_example_attention` computes one
example at a time (a `lax.map`, each example's scores about 1 MB, which stays in cache) and
recomputes them in the backward pass (`jax.checkpoint`), as flash attention does. It computes
the same function. On our 2-core CPU the report UNet's train step at batch 32 ran 1.10x faster
with it, 1.20x with huge pages (benchmarks/unet_attention.py: same process, alternating steps),
and at batch 8 no faster; so `dot_product_attention` uses it on the CPU from 256 x 256 scores
per head (the 16x16 self-attention), and flax's everywhere else.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

PER_EXAMPLE_MIN_SCORES = 256 * 256  # queries x keys per head


def _one_example(query, key, value):
    """[N, H, D], [M, H, D], [M, H, D] -> [N, H, D], as flax: softmax(q k^T / sqrt(D)) v."""
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    weights = jax.nn.softmax(jnp.einsum("nhd,mhd->hnm", query, key), axis=-1)
    return jnp.einsum("hnm,mhd->nhd", weights, value)


def per_example_attention(query, key, value):
    """[..., N, H, D] queries, [..., M, H, D] keys and values -> [..., N, H, D], one example at a
    time, scores recomputed for the backward pass."""
    batch_shape = query.shape[:-3]
    flat = [a.reshape(-1, *a.shape[-3:]) for a in (query, key, value)]
    out = lax.map(lambda args: jax.checkpoint(_one_example)(*args), tuple(flat))
    return out.reshape(*batch_shape, *out.shape[-3:])


def dot_product_attention(query, key, value, bias=None, mask=None, dropout_rate=0.0, deterministic=True,
                          dtype=None, precision=None):
    """An `attention_fn` for `flax.linen.MultiHeadDotProductAttention` (which passes only the
    arguments named here). The UNet uses no bias, mask or dropout, so neither does this."""
    if bias is not None or mask is not None or (dropout_rate > 0 and not deterministic):
        raise ValueError("slot_jax's dot_product_attention takes no bias, mask or dropout")
    if jax.default_backend() == "cpu" and query.shape[-3] * key.shape[-3] >= PER_EXAMPLE_MIN_SCORES:
        return per_example_attention(query, key, value)
    return nn.dot_product_attention(query, key, value, dtype=dtype, precision=precision)
