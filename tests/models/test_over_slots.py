import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.models.over_slots import mix_slots


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

