"""The nearest-neighbour upsampling block: its phase-by-phase form computes repeat + conv3x3."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import needs_onednn
from slot_jax import onednn
from slot_jax.models.blocks import NearestUpsampleConv, Upsample, nearest_upsample_kernel
from slot_jax.models.conv import Conv
from slot_jax.models.upsample import conv_transpose_by_phases


def _repeat_then_conv(x, kernel):
    """The definition, in float64 numpy: nearest 2x repeat, 'SAME' zero padding, conv3x3."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    up = np.pad(x.repeat(2, axis=1).repeat(2, axis=2), ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = up.shape[1] - 2, up.shape[2] - 2
    return sum(up[:, i:i + h, j:j + w] @ kernel[i, j] for i in range(3) for j in range(3))


def test_the_transposed_kernel_computes_repeat_then_conv():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    y = conv_transpose_by_phases(x, nearest_upsample_kernel(kernel), 2, "SAME", "native")
    np.testing.assert_allclose(y, _repeat_then_conv(x, kernel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["native", pytest.param("onednn", marks=needs_onednn)])
def test_upsample_values_gradients_and_parameters_match_repeat_then_conv(impl):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 5, 8))
    block = Upsample(6, impl)
    params = block.init(jax.random.PRNGKey(1), x)
    # The parameters Conv would have had under the same name, so checkpoints load either way.
    reference = Conv(6, (3, 3))
    conv_params = reference.init(jax.random.PRNGKey(1), jnp.zeros((1, 12, 10, 8)))
    assert jax.tree.map(jnp.shape, params["params"]["conv"]) == jax.tree.map(jnp.shape, conv_params["params"])
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias as well
    up = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    expected = lambda p, x: reference.apply({"params": p["params"]["conv"]}, up(x))
    np.testing.assert_allclose(block.apply(params, x), _repeat_then_conv(x, params["params"]["conv"]["kernel"])
                               + np.asarray(params["params"]["conv"]["bias"]), rtol=1e-5, atol=1e-5)
    target = jax.random.normal(jax.random.PRNGKey(2), (3, 12, 10, 6))
    loss = lambda f: lambda p, x: jnp.sum((f(p, x) - target) ** 2)
    got = jax.grad(loss(block.apply), argnums=(0, 1))(params, x)
    want = jax.grad(loss(expected), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got, want)


@needs_onednn
def test_upsample_on_onednn_goes_by_phases_without_the_repeated_input():
    x = jnp.ones((2, 8, 8, 4))
    lower = lambda impl: jax.jit(lambda x: NearestUpsampleConv(3, impl).init_with_output(
        jax.random.PRNGKey(0), x)[0]).lower(x).as_text()
    by_phases, repeated = lower("onednn"), lower("native")
    assert by_phases.count(onednn.TARGET) == 4  # one convolution per output phase
    assert "tensor<2x16x16x4xf32>" in repeated and "tensor<2x16x16x4xf32>" not in by_phases
    assert onednn.TARGET not in repeated
