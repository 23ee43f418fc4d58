import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.models.norm import GroupNorm, group_norm

SHAPES = [((2, 8, 8, 16), 4), ((3, 5, 7, 12), 3), ((2, 6, 6, 8), 1), ((2, 4, 4, 8), 8), ((2, 10, 6), 2)]


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    # an offset per channel, so that mean and variance both matter
    x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, channels) + rng.normal(size=channels)
    return (jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=channels), jnp.float32),
            jnp.asarray(rng.normal(size=channels), jnp.float32))


def _float64_definition(x, scale, bias, groups, epsilon=1e-6):
    x = np.asarray(x, np.float64)
    grouped = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    return y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_values_match_the_float64_definition(shape, groups):
    x, scale, bias = _inputs(shape)
    y = group_norm(x, scale, bias, groups, 1e-6)
    np.testing.assert_allclose(np.asarray(y), _float64_definition(x, scale, bias, groups), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_values_and_all_gradients_match_flax_group_norm(shape, groups):
    x, scale, bias = _inputs(shape, seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    flax_norm = nn.GroupNorm(groups)
    params = {"scale": scale, "bias": bias}

    def ours(params, x):
        return jnp.sum(jnp.sin(GroupNorm(groups).apply({"params": params}, x)) * weights)

    def theirs(params, x):
        return jnp.sum(jnp.sin(flax_norm.apply({"params": params}, x)) * weights)

    np.testing.assert_allclose(GroupNorm(groups).apply({"params": params}, x),
                               flax_norm.apply({"params": params}, x), atol=2e-5, rtol=1e-5)
    got, expected = jax.grad(ours, (0, 1))(params, x), jax.grad(theirs, (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.max(jnp.abs(b))), rtol=1e-4)


def test_gradient_matches_finite_differences():
    x, scale, bias = _inputs((2, 3, 3, 4), seed=3)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32)
    x64 = np.asarray(x, np.float64)
    grad = jax.grad(lambda x: jnp.sum(group_norm(x, scale, bias, 2, 1e-6) * weights))(x)

    def loss(x_value):
        return float(np.sum(_float64_definition(x_value, scale, bias, 2) * np.asarray(weights, np.float64)))

    step = 1e-5
    for index in [(0, 0, 0, 0), (0, 1, 2, 3), (1, 2, 1, 1), (1, 0, 2, 2)]:
        bumped_up, bumped_down = x64.copy(), x64.copy()
        bumped_up[index] += step
        bumped_down[index] -= step
        numeric = (loss(bumped_up) - loss(bumped_down)) / (2 * step)
        assert abs(float(grad[index]) - numeric) < 1e-3 * max(1.0, abs(numeric)), index


def test_parameters_are_those_of_flax_group_norm():
    x = jnp.zeros((1, 4, 4, 8))
    ours = GroupNorm(4).init(jax.random.PRNGKey(0), x)["params"]
    theirs = nn.GroupNorm(4).init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.map(lambda p: (p.shape, p.dtype), ours) == jax.tree.map(lambda p: (p.shape, p.dtype), theirs)
    np.testing.assert_array_equal(ours["scale"], theirs["scale"])
    np.testing.assert_array_equal(ours["bias"], theirs["bias"])


def test_constant_groups_normalise_to_the_bias_without_nans():
    x = jnp.full((2, 4, 4, 8), 3.0)
    y = group_norm(x, jnp.ones(8), jnp.arange(8.0), 4, 1e-6)
    grad = jax.grad(lambda x: jnp.sum(group_norm(x, jnp.ones(8), jnp.zeros(8), 4, 1e-6) ** 2))(x)
    np.testing.assert_allclose(y, jnp.broadcast_to(jnp.arange(8.0), y.shape), atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_groups_that_do_not_divide_the_channels_are_refused():
    with pytest.raises(ValueError, match="3 groups do not divide 8 channels"):
        GroupNorm(3).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 8)))


def test_gradient_stays_accurate_for_inputs_far_from_zero():
    # Means 50x the spread: float32 loses digits to cancellation here, flax's GroupNorm had 6e-4
    # relative error in dx against float64, the reduction order of ours 1.4e-4.
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(4, 8, 8, 32)) + 50.0).astype(np.float32)
    weights = rng.normal(size=x.shape)
    scale = rng.normal(size=32)
    grad = jax.grad(lambda x: jnp.sum(group_norm(x, jnp.asarray(scale, jnp.float32), jnp.zeros(32), 8, 1e-6)
                                      * jnp.asarray(weights, jnp.float32)))(jnp.asarray(x))
    grouped = x.astype(np.float64).reshape(4, -1, 8, 4)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    inv_std = 1 / np.sqrt(((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True) + 1e-6)
    x_hat = (grouped - mean) * inv_std
    g = (weights * scale).reshape(grouped.shape)
    expected = inv_std * (g - g.mean(axis=(1, 3), keepdims=True) - x_hat * (g * x_hat).mean(axis=(1, 3), keepdims=True))
    expected = expected.reshape(x.shape)
    assert np.max(np.abs(np.asarray(grad) - expected)) < 3e-4 * np.max(np.abs(expected))
