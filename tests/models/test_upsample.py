"""The sub-pixel transposed convolution computes what flax's ConvTranspose computes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.models.decoder import SpatialBroadcastDecoder
from slot_jax.models.upsample import SubpixelConvTranspose, conv_transpose_same_padding, depth_to_space, subpixel_kernel


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stride", [2, 3])
def test_values_and_gradients_match_native_conv_transpose(kernel, stride):
    x = jax.random.normal(jax.random.PRNGKey(kernel), (2, 6, 5, 3))
    native = nn.ConvTranspose(4, (kernel, kernel), strides=(stride, stride), padding="SAME")
    params = native.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias as well
    subpixel = SubpixelConvTranspose(4, (kernel, kernel), (stride, stride))
    assert jax.tree.map(jnp.shape, subpixel.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(subpixel.apply(params, x), native.apply(params, x), atol=1e-5)

    target = jax.random.normal(jax.random.PRNGKey(2), native.apply(params, x).shape)
    loss = lambda module: lambda p, x: jnp.sum((module.apply(p, x) - target) ** 2)
    g_native = jax.grad(loss(native), argnums=(0, 1))(params, x)
    g_subpixel = jax.grad(loss(subpixel), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_native, g_subpixel)


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_same_padding_is_the_explicit_padding_lax_uses(stride):
    for kernel in range(1, 8):
        x = jax.random.normal(jax.random.PRNGKey(kernel), (1, 5, 4, 2))
        w = jax.random.normal(jax.random.PRNGKey(stride), (kernel, kernel, 2, 3))
        pads = conv_transpose_same_padding(kernel, stride)
        same = jax.lax.conv_transpose(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        explicit = jax.lax.conv_transpose(x, w, (stride, stride), [pads, pads],
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
        assert same.shape == (1, 5 * stride, 4 * stride, 3)
        np.testing.assert_array_equal(same, explicit, err_msg=f"kernel {kernel}")


def test_padding_other_than_same_is_refused():
    with pytest.raises(ValueError, match="padding='SAME' only"):
        subpixel_kernel(jnp.ones((3, 3, 2, 2)), 2, "VALID")


def test_depth_to_space_places_phase_channels():
    x = jnp.arange(2 * 2 * 4, dtype=jnp.float32).reshape(1, 2, 2, 4)  # s=2, one output channel
    y = np.asarray(depth_to_space(x, 2))[0, :, :, 0]
    np.testing.assert_array_equal(y[:2, :2], [[0, 1], [2, 3]])  # pixel (0,0)'s four phases
    np.testing.assert_array_equal(y[2:, 2:], [[12, 13], [14, 15]])


def test_decoder_upsampling_implementations_agree_with_shared_parameters():
    slots = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    make = lambda impl: SpatialBroadcastDecoder(broadcast_size=(4, 4), channels=(6, 6, 6), kernel_sizes=(5, 5, 3),
                                                strides=(2, 2, 1), upsample=impl)
    params = make("transpose").init(jax.random.PRNGKey(1), slots)
    a = make("transpose").apply(params, slots)
    b = make("subpixel").apply(params, slots)
    np.testing.assert_allclose(a["recon"], b["recon"], atol=1e-5)
    np.testing.assert_allclose(a["masks"], b["masks"], atol=1e-5)
