"""The sub-pixel and by-phases transposed convolutions compute what flax's ConvTranspose computes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import needs_onednn, needs_onednn_bf16
from slot_jax import onednn
from slot_jax.models import decoder as decoder_lib
from slot_jax.models import upsample
from slot_jax.models.decoder import SpatialBroadcastDecoder, resolve_upsample
from slot_jax.models.upsample import (
    SubpixelConvTranspose, conv_transpose_by_phases, conv_transpose_same_padding, depth_to_space, phase_windows,
    subpixel_kernel, weight_gradient_by_phases)



# Every case through the sub-pixel module; two through the by-phases one, whose function itself
# test_by_phases_matches_the_definition checks in every case.
@pytest.mark.parametrize("kernel,stride,by_phases", [(k, s, False) for k in range(1, 6) for s in (2, 3)]
                         + [(5, 2, True), (4, 3, True)])
def test_values_and_gradients_match_native_conv_transpose(kernel, stride, by_phases):
    x = jax.random.normal(jax.random.PRNGKey(kernel), (2, 6, 5, 3))
    native = nn.ConvTranspose(4, (kernel, kernel), strides=(stride, stride), padding="SAME")
    params = native.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias as well
    subpixel = SubpixelConvTranspose(4, (kernel, kernel), (stride, stride), by_phases=by_phases)
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
    conv_impl = "onednn" if onednn.available() else "native"
    slots = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    make = lambda impl: SpatialBroadcastDecoder(broadcast_size=(4, 4), channels=(6, 6, 6), kernel_sizes=(5, 5, 3),
                                                strides=(2, 2, 1), upsample=impl, conv_impl=conv_impl)
    params = make("transpose").init(jax.random.PRNGKey(1), slots)
    loss = lambda impl: lambda p: jnp.sum(jnp.sin(make(impl).apply(p, slots)["recon"]))
    a, grad_a = make("transpose").apply(params, slots), jax.grad(loss("transpose"))(params)
    for impl in ("subpixel", "phases"):
        b = make(impl).apply(params, slots)
        np.testing.assert_allclose(a["recon"], b["recon"], atol=1e-5)
        np.testing.assert_allclose(a["masks"], b["masks"], atol=1e-5)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), grad_a,
                     jax.grad(loss(impl))(params))


def _transpose_reference(x, kernel, stride, cotangent):
    """flax's ConvTranspose (SAME, no kernel flip) and its vector-Jacobian product from the
    definition, in float64 numpy: y[p] = sum_t x[(p + t - before) / s] W[t] over the t for which
    that index is whole, so input pixel m adds x[m] @ W[t] to output pixel s*m + before - t."""
    x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
    k, s = kernel.shape[0], stride
    before, _ = conv_transpose_same_padding(k, s)
    offset = k - 1 - before  # output pixel p sits at s*m + (k-1-t) = p + offset
    n, h, w, _ = x.shape
    size = lambda m: max(s * (m - 1) + k, offset + s * m)  # holds every s*m + t' and the output
    y_pad = np.zeros((n, size(h), size(w), kernel.shape[3]))
    g_pad = np.zeros_like(y_pad)
    g_pad[:, offset:offset + s * h, offset:offset + s * w] = g
    dx, dw = np.zeros_like(x), np.zeros_like(kernel)
    for i in range(k):
        for j in range(k):
            window = (slice(None), slice(i, i + s * (h - 1) + 1, s), slice(j, j + s * (w - 1) + 1, s))
            tap = kernel[k - 1 - i, k - 1 - j]
            y_pad[window] += x @ tap
            dx += g_pad[window] @ tap.T
            dw[k - 1 - i, k - 1 - j] = np.einsum("nhwc,nhwo->co", x, g_pad[window])
    return y_pad[:, offset:offset + s * h, offset:offset + s * w], dx, dw


@pytest.mark.parametrize("kernel,stride", [(1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (3, 3), (5, 3)])
@pytest.mark.parametrize("conv_impl", ["native", pytest.param("onednn", marks=needs_onednn)])
@pytest.mark.parametrize("gradient_by_phases", [True, False])
def test_by_phases_matches_the_definition(kernel, stride, conv_impl, gradient_by_phases, monkeypatch):
    monkeypatch.setattr(upsample, "WEIGHT_GRADIENT_BY_PHASES", gradient_by_phases)
    x = jax.random.normal(jax.random.PRNGKey(kernel), (3, 7, 5, 4))
    w = jax.random.normal(jax.random.PRNGKey(stride), (kernel, kernel, 4, 6))
    fn = jax.jit(lambda x, w: conv_transpose_by_phases(x, w, stride, "SAME", conv_impl))
    y, vjp = jax.vjp(fn, x, w)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape)
    expected_y, expected_dx, expected_dw = _transpose_reference(x, w, stride, cotangent)
    assert y.shape == expected_y.shape == (3, 7 * stride, 5 * stride, 6)
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
    dx, dw = vjp(cotangent)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride", [(5, 2), (3, 3)])
@pytest.mark.parametrize("conv_impl", ["native", pytest.param("onednn", marks=needs_onednn)])
def test_by_phases_with_bias_and_relu_matches_the_definition(kernel, stride, conv_impl):
    x = jax.random.normal(jax.random.PRNGKey(kernel), (3, 7, 5, 4))
    w = jax.random.normal(jax.random.PRNGKey(stride), (kernel, kernel, 4, 6))
    b = jax.random.normal(jax.random.PRNGKey(3), (6,))
    fn = jax.jit(lambda x, w, b: conv_transpose_by_phases(x, w, stride, "SAME", conv_impl, b, relu=True))
    y, vjp = jax.vjp(fn, x, w, b)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape)
    z = _transpose_reference(x, w, stride, cotangent)[0] + np.asarray(b, np.float64)
    dz = np.where(z > 0, cotangent, 0.0)
    _, expected_dx, expected_dw = _transpose_reference(x, w, stride, dz)
    np.testing.assert_allclose(y, np.maximum(z, 0), rtol=1e-5, atol=1e-5)
    dx, dw, db = vjp(cotangent)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, dz.sum((0, 1, 2)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride", [(5, 2), (4, 2), (2, 2), (3, 3), (5, 3)])
@pytest.mark.parametrize("on_onednn", [False, pytest.param(True, marks=needs_onednn)])
def test_kernel_gradient_by_phases_in_chunks_matches_the_definition(kernel, stride, on_onednn):
    x = jax.random.normal(jax.random.PRNGKey(kernel), (5, 6, 7, 3))
    w = jnp.zeros((kernel, kernel, 3, 4))
    dy = jax.random.normal(jax.random.PRNGKey(stride), (5, 6 * stride, 7 * stride, 4))
    expected = _transpose_reference(x, w, stride, dy)[2]
    for chunk in (5, 2):  # one chunk; chunks of 2, 2 and 1 images
        dw = jax.jit(weight_gradient_by_phases, static_argnums=(2, 3, 4, 5))(x, dy, kernel, stride, chunk, on_onednn)
        np.testing.assert_allclose(dw, expected, rtol=1e-4, atol=1e-4)


@needs_onednn_bf16
@pytest.mark.parametrize("kernel,stride", [(5, 2), (4, 2), (3, 3)])
def test_by_phases_in_bfloat16_on_onednn_matches_the_definition(kernel, stride):
    half = [a.astype(jnp.bfloat16) for a in (jax.random.normal(jax.random.PRNGKey(kernel), (3, 7, 5, 4)),
                                             jax.random.normal(jax.random.PRNGKey(stride), (kernel, kernel, 4, 6)) * 0.3,
                                             jax.random.normal(jax.random.PRNGKey(3), (6,)))]
    x, w, b = (np.asarray(a, np.float64) for a in half)  # the values a bf16 convolution reads
    fn = jax.jit(lambda x, w, b: conv_transpose_by_phases(x, w, stride, "SAME", "onednn", b, relu=True))
    y, vjp = jax.vjp(fn, *half)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape).astype(jnp.bfloat16)
    z = _transpose_reference(x, w, stride, cotangent)[0] + b
    dz = np.where(z > 0, np.asarray(cotangent, np.float64), 0.0)
    _, expected_dx, expected_dw = _transpose_reference(x, w, stride, dz)
    dx, dw, db = vjp(cotangent)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == jnp.bfloat16
    # Sums in float32, each result rounded once to bf16's 8 significant bits (2^-8 relative).
    for got, want in ((y, np.maximum(z, 0)), (dx, expected_dx), (dw, expected_dw), (db, dz.sum((0, 1, 2)))):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 ** -8, atol=1e-6 * np.abs(want).max())
    # Each phase's convolution, the input gradient and each phase's kernel gradient on oneDNN.
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w, half[2]).astype(jnp.float32) ** 2), argnums=(0, 1)))
    lowered = grad.lower(*half[:2]).as_text()
    assert lowered.count(onednn.TARGET) == 2 * stride * stride + 1 and "stablehlo.convolution" not in lowered


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_phase_windows_use_every_tap_once(stride):
    for kernel in range(1, 8):
        windows = phase_windows(kernel, stride)
        if kernel < stride:  # some phase gets no tap: the layer stays sub-pixel
            assert windows is None
            continue
        assert len(windows) == stride
        assert sorted(t for taps, _ in windows for t in taps) == list(range(kernel))
        for taps, (before, after) in windows:
            assert before >= 0 and after >= 0 and before + after + 1 == len(taps)


@needs_onednn
def test_by_phases_runs_each_phase_and_the_input_gradient_on_onednn():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((5, 5, 4, 3))
    lowered = lambda fn: jax.jit(fn).lower(x, w).as_text()
    forward = lambda x, w: conv_transpose_by_phases(x, w, 2, "SAME", "onednn")
    assert lowered(forward).count(onednn.TARGET) == 4
    assert lowered(jax.grad(lambda x, w: jnp.sum(forward(x, w) ** 2))).count(onednn.TARGET) == 5
    fused = lambda x, w: conv_transpose_by_phases(x, w, 2, "SAME", "onednn", jnp.ones(3), relu=True)
    assert lowered(fused).count('\\22BIAS\\22,\\22RELU\\22') == 4 and "maximum" not in lowered(fused)
    assert onednn.TARGET not in lowered(lambda x, w: conv_transpose_by_phases(x, w, 2, "SAME", "native"))


def test_auto_upsampling_goes_by_phases_only_where_onednn_runs_that_dtype(monkeypatch):
    for impl in ("transpose", "subpixel", "phases"):
        assert resolve_upsample(impl) == impl
    assert not onednn.available("float16")  # oneDNN is never called on a dtype it is not probed on
    monkeypatch.setattr(decoder_lib, "resolve_conv_impl", lambda impl, *shape: "onednn")
    monkeypatch.setattr(onednn, "available", lambda dtype="float32": dtype in onednn.PROBE_CASES)
    assert resolve_upsample("auto") == "phases"
    assert resolve_upsample("auto", dtype=jnp.bfloat16) == "phases"
    assert resolve_upsample("auto", dtype=jnp.float16) == "subpixel"  # oneDNN is not called on float16
    monkeypatch.setattr(onednn, "available", lambda dtype="float32": dtype == "float32")
    assert resolve_upsample("auto", dtype=jnp.bfloat16) == "subpixel"  # a oneDNN without bf16 kernels
    monkeypatch.setattr(decoder_lib, "resolve_conv_impl", lambda impl, *shape: "native")
    assert resolve_upsample("auto") == "subpixel"
