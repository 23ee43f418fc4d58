import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.models.over_slots import mix_slots, softmax_over_slots


def _softmax_mixture(x):
    masks = jax.nn.softmax(x[..., 3:], axis=1)
    return jnp.sum(masks * x[..., :3], axis=1), masks


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 4), (3, 7, 6, 6, 4), (1, 1, 3, 3, 4)])
def test_slot_mixture_is_the_softmax_mixture_with_both_gradients(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape) * 3, jnp.float32)
    recon_weights = jnp.asarray(rng.normal(size=(shape[0], *shape[2:4], 3)), jnp.float32)
    mask_weights = jnp.asarray(rng.normal(size=(*shape[:4], 1)), jnp.float32)

    def loss(mixture, x):
        recon, masks = mixture(x)
        return jnp.sum(jnp.sin(recon) * recon_weights) + jnp.sum(jnp.cos(masks) * mask_weights)

    for ours, reference in zip(mix_slots(x), _softmax_mixture(x)):
        np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: loss(mix_slots, x))(x),
                               jax.grad(lambda x: loss(_softmax_mixture, x))(x), atol=1e-5, rtol=1e-5)
    # the training loss only sees recon: the masks' cotangent is zero
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(mix_slots(x)[0] * recon_weights))(x),
                               jax.grad(lambda x: jnp.sum(_softmax_mixture(x)[0] * recon_weights))(x),
                               atol=1e-5, rtol=1e-5)


def test_slot_mixture_survives_large_logits():
    x = jnp.zeros((1, 3, 2, 2, 4)).at[:, 0, ..., 3].set(1e4).at[:, 1, ..., 3].set(-1e4)
    recon, masks = mix_slots(x)
    grad = jax.grad(lambda x: jnp.sum(mix_slots(x)[0]))(x)
    np.testing.assert_allclose(masks[:, :, ..., 0].sum(axis=1), 1.0)
    assert bool(jnp.all(jnp.isfinite(grad))) and bool(jnp.all(jnp.isfinite(recon)))


@pytest.mark.parametrize("shape", [(2, 5, 12), (3, 7, 4, 4, 1), (2, 1, 6)])
def test_softmax_over_slots_is_jax_softmax_with_its_gradient(shape):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=shape) * 4, jnp.float32)
    weights = jnp.asarray(rng.normal(size=shape), jnp.float32)
    np.testing.assert_allclose(softmax_over_slots(logits), jax.nn.softmax(logits, axis=1), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jnp.sin(softmax_over_slots(x)) * weights))(logits),
                               jax.grad(lambda x: jnp.sum(jnp.sin(jax.nn.softmax(x, axis=1)) * weights))(logits),
                               atol=1e-5, rtol=1e-5)


def test_softmax_over_slots_survives_large_logits():
    logits = jnp.array([[[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]]])
    probabilities = softmax_over_slots(logits)
    grad = jax.grad(lambda x: jnp.sum(softmax_over_slots(x)[:, 0] ** 2))(logits)
    np.testing.assert_allclose(probabilities, [[[1, 0], [0, 1], [0, 0]]], atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))
