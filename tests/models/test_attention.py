"""The UNet's attention: the per-example CPU lowering computes flax's dot-product attention."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.models import attention


def _qkv(batch, n, m, heads=2, depth=8):
    keys = jax.random.split(jax.random.PRNGKey(n * 7 + m), 3)
    return (jax.random.normal(keys[0], (*batch, n, heads, depth)),
            2 * jax.random.normal(keys[1], (*batch, m, heads, depth)),
            jax.random.normal(keys[2], (*batch, m, heads, depth)))


@pytest.mark.parametrize("batch, n, m", [((3,), 16, 16), ((2,), 12, 5), ((2, 3), 6, 6)])
def test_per_example_attention_matches_flax_values_and_gradients(batch, n, m):
    q, k, v = _qkv(batch, n, m)
    np.testing.assert_allclose(attention.per_example_attention(q, k, v), nn.dot_product_attention(q, k, v),
                               atol=1e-5)
    weights = jax.random.normal(jax.random.PRNGKey(9), q.shape)

    def grads(fn):
        return jax.grad(lambda q, k, v: jnp.sum(weights * fn(q, k, v)), argnums=(0, 1, 2))(q, k, v)
    for ours, theirs in zip(grads(attention.per_example_attention), grads(nn.dot_product_attention)):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_the_cpu_uses_per_example_attention_from_the_threshold(monkeypatch):
    monkeypatch.setattr(attention, "PER_EXAMPLE_MIN_SCORES", 16 * 16)
    uses_map = lambda *shapes: "scan[" in str(jax.make_jaxpr(attention.dot_product_attention)(*_qkv((2,), *shapes)))
    assert jax.default_backend() == "cpu"
    assert uses_map(16, 16) and not uses_map(16, 15)


def test_multi_head_attention_with_it_matches_flax_default():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 16))
    ours = nn.MultiHeadDotProductAttention(4, attention_fn=attention.per_example_attention)
    theirs = nn.MultiHeadDotProductAttention(4)
    params = theirs.init(jax.random.PRNGKey(1), x, x)
    np.testing.assert_allclose(ours.apply(params, x, x), theirs.apply(params, x, x), atol=1e-5)


def test_masks_bias_and_dropout_are_refused():
    q, k, v = _qkv((1,), 4, 4)
    with pytest.raises(ValueError, match="no bias, mask or dropout"):
        attention.dot_product_attention(q, k, v, mask=jnp.ones((1, 2, 4, 4), bool))
    with pytest.raises(ValueError, match="no bias, mask or dropout"):
        attention.dot_product_attention(q, k, v, dropout_rate=0.1, deterministic=False)
