"""Every convolution lowering computes the convolution's definition: values and both gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SA_CONFIG, TINY_OVERRIDES, needs_onednn, needs_onednn_bf16
from slot_jax import onednn, xla_cpu
from slot_jax.config_loader import config_from_args
from slot_jax.models import conv as conv_lib
from slot_jax.models.autoencoder import build_autoencoder
from slot_jax.models.conv import Conv, conv2d, resolve_conv_impl


def _reference(x, kernel, stride, padding, cotangent):
    """The convolution and its vector-Jacobian product from the definition, in float64 numpy,
    y[n, p, q] = sum_ij xpad[n, s*p + i, s*q + j] @ W[i, j]. Independent of XLA's convolutions,
    whose input gradient for even kernels with asymmetric padding reads uninitialised memory
    in jax 0.10.2 on the CPU."""
    x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
    k = kernel.shape[0]
    if padding == "SAME":
        pads = [conv_lib._explicit_padding(size, k, stride, "SAME") for size in x.shape[1:3]]
    else:
        pads = [(0, 0), (0, 0)] if padding == "VALID" else padding
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    ho, wo = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    dxp, dw = np.zeros_like(xp), np.zeros_like(kernel)
    for i in range(k):
        for j in range(k):
            window = (slice(None), slice(i, i + stride * (ho - 1) + 1, stride), slice(j, j + stride * (wo - 1) + 1, stride))
            y += xp[window] @ kernel[i, j]
            dxp[window] += g @ kernel[i, j].T
            dw[i, j] = np.einsum("nhwc,nhwo->co", xp[window], g)
    (top, _), (left, _) = pads
    return y, dxp[:, top:top + x.shape[1], left:left + x.shape[2]], dw


def _check_against_reference(impl, x, kernel, stride, padding):
    y = jax.jit(lambda x, w: conv2d(x, w, stride, padding, impl))(x, kernel)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape)
    expected_y, expected_dx, expected_dw = _reference(x, kernel, stride, padding, cotangent)
    assert y.shape == expected_y.shape
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)
    _, vjp = jax.vjp(jax.jit(lambda x, w: conv2d(x, w, stride, padding, impl)), x, kernel)
    dx, dw = vjp(cotangent)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_im2col_matches_the_definition(kernel_size, stride, padding):
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (2, 9, 7, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(stride), (kernel_size, kernel_size, 3, 5))
    _check_against_reference("im2col", x, kernel, stride, padding)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_native_lowering_matches_the_definition(kernel_size, padding):
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (2, 8, 6, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (kernel_size, kernel_size, 3, 4))
    if kernel_size % 2 == 0 and padding not in ("SAME", "VALID"):
        pytest.skip("XLA:CPU's input gradient is wrong here in jax 0.10.2 (see _reference)")
    _check_against_reference("native", x, kernel, 2 if kernel_size > 2 else 1, padding)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_output_shift_matches_the_definition(kernel_size, padding):
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (2, 8, 6, 7))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (kernel_size, kernel_size, 7, 4))
    _check_against_reference("output_shift", x, kernel, 1, padding)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3)), ((0, 1), (3, 0))])
def test_phase_grad_matches_the_definition(kernel_size, stride, padding):
    # Odd and even sizes, so that strides drop trailing rows and phases end unevenly.
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (2, 9, 8, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(stride), (kernel_size, kernel_size, 3, 5))
    _check_against_reference("phase_grad", x, kernel, stride, padding)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3)), ((0, 1), (3, 0))])
def test_swap_wgrad_matches_the_definition(kernel_size, padding):
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (3, 9, 8, 6))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (kernel_size, kernel_size, 6, 2))
    if kernel_size % 2 == 0 and padding not in ("SAME", "VALID"):
        # Its input gradient is XLA's (see _reference); check the weight gradient alone.
        y = conv2d(x, kernel, 1, padding, "swap_wgrad")
        cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape)
        _, _, expected_dw = _reference(x, kernel, 1, padding, cotangent)
        dw = jax.vjp(lambda w: conv2d(x, w, 1, padding, "swap_wgrad"), kernel)[1](cotangent)[0]
        np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)
        return
    _check_against_reference("swap_wgrad", x, kernel, 1, padding)




def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@needs_onednn
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3)), ((0, 1), (3, 0))])
def test_onednn_matches_the_definition(kernel_size, stride, padding):
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (2, 9, 8, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(stride), (kernel_size, kernel_size, 3, 5))
    _check_against_reference("onednn", x, kernel, stride, padding)


@needs_onednn
@pytest.mark.parametrize("stride", [1, 2])
def test_onednn_runs_the_forward_pass_and_the_input_gradient(stride):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 6))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6, 2))
    forward = _lowered(lambda x, w: conv2d(x, w, stride, "SAME", "onednn"), x, kernel)
    assert forward.count(onednn.TARGET) == 1
    input_grad = _lowered(jax.grad(lambda x, w: jnp.sum(conv2d(x, w, stride, "SAME", "onednn") ** 2)), x, kernel)
    assert input_grad.count(onednn.TARGET) == 2  # forward, and the input gradient (by phases when strided)
    native = _lowered(jax.grad(lambda x, w: jnp.sum(conv2d(x, w, stride, "SAME", "native") ** 2)), x, kernel)
    assert onednn.TARGET not in native


@pytest.mark.parametrize("impl", ["native", pytest.param("onednn", marks=needs_onednn)])
@pytest.mark.parametrize("stride, padding", [(1, "SAME"), (2, ((2, 0), (1, 3)))])
def test_bias_and_relu_epilogue_matches_the_definition(impl, stride, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
    bias = jax.random.normal(jax.random.PRNGKey(2), (5,))
    fn = jax.jit(lambda x, w, b: conv2d(x, w, stride, padding, impl, b, relu=True))
    y, vjp = jax.vjp(fn, x, kernel, bias)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape)
    z = _reference(x, kernel, stride, padding, cotangent)[0] + np.asarray(bias, np.float64)
    dz = np.where(z > 0, cotangent, 0.0)  # through the ReLU, then through the convolution
    _, expected_dx, expected_dw = _reference(x, kernel, stride, padding, dz)
    np.testing.assert_allclose(y, np.maximum(z, 0), rtol=1e-5, atol=1e-5)
    dx, dw, db = vjp(cotangent)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, dz.sum((0, 1, 2)), rtol=1e-4, atol=1e-4)


@needs_onednn
def test_onednn_adds_the_bias_and_applies_the_relu_inside_its_convolution():
    x, kernel, bias = jnp.ones((2, 8, 8, 6)), jnp.ones((3, 3, 6, 2)), jnp.ones(2)
    fused = _lowered(lambda x, w, b: conv2d(x, w, 1, "SAME", "onednn", b, relu=True), x, kernel, bias)
    assert fused.count(onednn.TARGET) == 1 and '\\22BIAS\\22,\\22RELU\\22' in fused
    assert "maximum" not in fused and "add" not in fused
    native = _lowered(lambda x, w, b: conv2d(x, w, 1, "SAME", "native", b, relu=True), x, kernel, bias)
    assert "maximum" in native and "add" in native


def test_batch_chunk_rule(monkeypatch):
    monkeypatch.setattr(conv_lib, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(conv_lib, "MIN_CHUNK", 8)
    monkeypatch.setattr(conv_lib, "MAX_CHUNK", 1000)
    assert conv_lib.batch_chunk(100, 10) == 100   # a chunk of 100 images is the batch
    assert conv_lib.batch_chunk(200, 10) == 100
    assert conv_lib.batch_chunk(250, 10) == 84    # three chunks, as even as they can be: 84, 84, 82
    assert conv_lib.batch_chunk(240, 50) == 20
    assert conv_lib.batch_chunk(250, 10**6) == 8  # never fewer than MIN_CHUNK images
    assert conv_lib.batch_chunk(15, 10**6) == 15  # one chunk of 8 would leave 7: keep it whole
    monkeypatch.setattr(conv_lib, "MAX_CHUNK", 16)
    assert conv_lib.batch_chunk(250, 10) == 16    # never more than MAX_CHUNK images


def test_in_batch_chunks_is_the_function_of_the_whole_batch():
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
    fn = lambda x: jnp.tanh(x) * jnp.sum(x, axis=1, keepdims=True)  # noqa: E731 (per-row)
    for chunk in (1, 3, 7, 9):
        np.testing.assert_array_equal(conv_lib.in_batch_chunks(fn, chunk, x), fn(x))
    assert jax.make_jaxpr(lambda x: conv_lib.in_batch_chunks(fn, 3, x))(x).eqns[-1].primitive.name == "concatenate"


@pytest.mark.parametrize("swapped, stride", [(False, 1), (False, 2), (True, 1)])  # swap_wgrad: stride 1
@pytest.mark.parametrize("padding", ["SAME", ((2, 0), (1, 3))])
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_weight_gradient_by_chunks_matches_the_definition(swapped, stride, padding, chunk):
    x = jax.random.normal(jax.random.PRNGKey(chunk), (5, 9, 8, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(stride), (3, 3, 3, 4))
    y = conv2d(x, kernel, stride, padding, "native")
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape)
    _, _, expected = _reference(x, kernel, stride, padding, cotangent)
    pads = conv_lib._paddings(x.shape, 3, stride, padding)
    dw = jax.jit(lambda x, g: conv_lib.weight_gradient_by_chunks(x, g, kernel, stride, pads, chunk, swapped))(
        x, cotangent)
    np.testing.assert_allclose(dw, expected, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("c_out", [5, 1])  # XLA's weight gradient, and swap_wgrad's (4 * c_out <= c_in)
def test_onednn_chunks_its_weight_gradient_over_the_batch(monkeypatch, c_out):
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 9, 8, 4))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, c_out))

    def gradients():  # a new function each time, so that jit traces it again
        return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv2d(x, w, 1, "SAME", "onednn"))), argnums=(0, 1))

    whole = gradients()(x, kernel)
    assert _lowered(gradients(), x, kernel).count("stablehlo.convolution") == 1
    monkeypatch.setattr(conv_lib, "MIN_CHUNK", 3)
    monkeypatch.setattr(conv_lib, "CHUNK_BYTES", 1)
    assert _lowered(gradients(), x, kernel).count("stablehlo.convolution") == 3  # images 0-2, 3-5 and 6
    chunked = gradients()(x, kernel)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_falls_back_where_it_cannot_run():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 6))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6, 4))
    half = (x.astype(jnp.float16), kernel.astype(jnp.float16))
    assert onednn.TARGET not in _lowered(lambda x, w: conv2d(x, w, 1, "SAME", "onednn"), *half)
    np.testing.assert_array_equal(conv2d(*half, 1, "SAME", "onednn"), conv2d(*half, 1, "SAME", "native"))
    cropping = ((-1, 1), (1, -1))  # negative padding crops; oneDNN's padding cannot
    assert onednn.TARGET not in _lowered(lambda x, w: conv2d(x, w, 1, cropping, "onednn"), x, kernel)
    np.testing.assert_allclose(conv2d(x, kernel, 1, cropping, "onednn"), conv2d(x, kernel, 1, cropping, "native"),
                               rtol=1e-6, atol=1e-6)


def _rounded(*arrays):
    """The arrays in bfloat16, and the float32 values they hold (what a bf16 convolution reads)."""
    half = [a.astype(jnp.bfloat16) for a in arrays]
    return half, [h.astype(jnp.float32) for h in half]


@needs_onednn
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=needs_onednn_bf16)])
def test_weight_gradient_on_onednn_matches_the_definition(kernel_size, padding, dtype, monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(kernel_size), (5, 9, 8, 3))
    kernel = jnp.zeros((kernel_size, kernel_size, 3, 4))
    pads = conv_lib._paddings(x.shape, kernel_size, 1, padding)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), conv2d(x, kernel, 1, padding, "native").shape)
    (x, cotangent), exact = _rounded(x, cotangent) if dtype == "bfloat16" else ((x, cotangent), (x, cotangent))
    expected = _reference(*exact[:1], kernel, 1, padding, exact[1])[2]
    pixels = cotangent.shape[1] * cotangent.shape[2]
    monkeypatch.setattr(conv_lib, "WEIGHT_GRADIENT_MIN_IMAGES", 1)
    for images in (5, 2):  # one chunk; chunks of 2, 2 and 1 images, summed in float32
        monkeypatch.setattr(conv_lib, "WEIGHT_GRADIENT_PIXELS", images * pixels)
        dw = jax.jit(lambda x, g: conv_lib.weight_gradient_on_onednn(x, g, pads, jnp.float32))(x, cotangent)
        assert dw.dtype == jnp.float32 and dw.shape == kernel.shape
        np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-5)


@needs_onednn_bf16
@pytest.mark.parametrize("stride, padding", [(1, "SAME"), (1, ((2, 0), (1, 3))), (2, ((2, 0), (1, 3)))])
def test_bfloat16_on_onednn_matches_the_definition(stride, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, 6))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6, 5)) * 0.3
    bias = jax.random.normal(jax.random.PRNGKey(2), (5,))
    (x, kernel, bias), (x32, kernel32, bias32) = _rounded(x, kernel, bias)
    fn = jax.jit(lambda x, w, b: conv2d(x, w, stride, padding, "onednn", b, relu=True))
    y, vjp = jax.vjp(fn, x, kernel, bias)
    cotangent = jax.random.normal(jax.random.PRNGKey(9), y.shape).astype(jnp.bfloat16)
    z = _reference(x32, kernel32, stride, padding, cotangent)[0] + np.asarray(bias32, np.float64)
    dz = np.where(z > 0, np.asarray(cotangent, np.float64), 0.0)
    _, expected_dx, expected_dw = _reference(x32, kernel32, stride, padding, dz)
    dx, dw, db = vjp(cotangent)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == jnp.bfloat16
    # Sums in float32, each result rounded once to bf16's 8 significant bits (2^-8 relative).
    for got, want in ((y, np.maximum(z, 0)), (dx, expected_dx), (dw, expected_dw), (db, dz.sum((0, 1, 2)))):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 ** -8, atol=1e-6 * np.abs(want).max())
    # Forward, input and (at stride 1) weight gradient all on oneDNN; XLA's weight gradient at stride 2.
    grad = _lowered(jax.grad(lambda x, w, b: jnp.sum(fn(x, w, b).astype(jnp.float32) ** 2), argnums=(0, 1, 2)),
                    x, kernel, bias)
    assert grad.count(onednn.TARGET) == (3 if stride == 1 else 2)
    assert ("stablehlo.convolution" in grad) == (stride == 2)


@needs_onednn_bf16
def test_bfloat16_narrowing_layers_keep_xlas_swapped_weight_gradient():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 8)).astype(jnp.bfloat16)
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 2)).astype(jnp.bfloat16)
    assert not conv_lib.weight_gradient_on_onednn_pays(jnp.bfloat16, 8, 2)  # 4 * 2 <= 8
    assert conv_lib.weight_gradient_on_onednn_pays(jnp.bfloat16, 8, 3)
    assert not conv_lib.weight_gradient_on_onednn_pays(jnp.float32, 8, 8)
    grad = _lowered(jax.grad(lambda x, w: jnp.sum(conv2d(x, w, 1, "SAME", "onednn").astype(jnp.float32) ** 2),
                             argnums=(0, 1)), x, kernel)
    assert grad.count(onednn.TARGET) == 2 and grad.count("stablehlo.convolution") == 1


def test_onednn_weight_gradient_chunk_rule(monkeypatch):
    monkeypatch.setattr(conv_lib, "WEIGHT_GRADIENT_PIXELS", 1 << 15)
    monkeypatch.setattr(conv_lib, "WEIGHT_GRADIENT_MIN_IMAGES", 4)
    assert conv_lib.onednn_weight_gradient_chunk(224, 64 * 64) == 8
    assert conv_lib.onednn_weight_gradient_chunk(32, 32 * 32) == 32
    assert conv_lib.onednn_weight_gradient_chunk(32, 128 * 128) == 4   # never fewer than 4 images
    assert conv_lib.onednn_weight_gradient_chunk(3, 128 * 128) == 3    # nor more than the batch
    assert conv_lib.onednn_weight_gradient_chunk(100, 16 * 16) == 100


def test_onednn_probe_reports_a_crashing_or_disagreeing_child():
    crashed = onednn.probe("import os; os.abort()")
    assert not crashed["ok"] and "exited with" in crashed["why"]
    # The encoding of older XLA releases (1-based spatial axes, offset windows) read by this one:
    # the probe must not pass it, whether oneDNN aborts or computes something else.
    old_encoding = (
        "import json, slot_jax.onednn as o\n"
        "new = o.backend_config\n"
        "def old(k, stride, pads, epilogue=()):\n"
        "    c = json.loads(new(k, stride + 1, tuple((a + 1, b + 1) for a, b in pads), epilogue))\n"
        "    c['onednn_conv_config']['input']['data']['spatial_dims'] = [2, 3]\n"
        "    return json.dumps(c)\n"
        "o.backend_config = old\n"
        "print(json.dumps(o._probe_in_this_process()))")
    assert not onednn.probe(old_encoding)["ok"]


def test_onednn_switch_and_cached_verdict(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(onednn, "probe", lambda dtype: calls.append(1) or {"ok": False, "why": "test"})
    try:
        monkeypatch.setenv(onednn.SWITCH, "0")
        onednn.available.cache_clear()
        assert not onednn.available() and not calls
        monkeypatch.setenv(onednn.SWITCH, "")
        onednn.available.cache_clear()
        assert not onednn.available() and calls == [1]
        assert onednn._cache_file().exists()
        onednn.available.cache_clear()
        assert not onednn.available() and calls == [1]  # the cached verdict, no second probe
    finally:
        onednn.available.cache_clear()


def test_onednn_verdict_is_cached_per_cpu(monkeypatch, tmp_path):
    # A verdict reached on an AVX512_BF16 CPU must not be read on one without it (a home
    # directory shared by machines of different kinds): another CPU probes again.
    from slot_jax import cpu
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(onednn.SWITCH, "")
    calls = []
    monkeypatch.setattr(onednn, "probe", lambda dtype: calls.append(dtype) or {"ok": True, "why": "test"})
    kinds = [{"model": "Intel Xeon", "vector_isa": ["avx2", "avx512f", "avx512_bf16"]},
             {"model": "AMD EPYC", "vector_isa": ["avx2", "fma"]}]
    try:
        for kind in kinds:
            monkeypatch.setattr(cpu, "describe", lambda kind=kind: kind)
            onednn.available.cache_clear()
            assert onednn.available("bfloat16")
        assert calls == ["bfloat16", "bfloat16"]
        assert len({p.name for p in (tmp_path / "slot_jax").iterdir()}) == 2
    finally:
        onednn.available.cache_clear()


def test_onednn_probe_that_did_not_run_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(onednn.SWITCH, "")
    calls = []
    monkeypatch.setattr(onednn, "probe", lambda dtype: calls.append(1) or {"ok": False, "why": "busy", "transient": True})
    try:
        for expected_calls in (1, 2):
            onednn.available.cache_clear()
            assert not onednn.available() and len(calls) == expected_calls
        assert not onednn._cache_file().exists()
    finally:
        onednn.available.cache_clear()


def test_phase_grad_is_the_native_convolution_at_stride_one():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 3))
    np.testing.assert_array_equal(conv2d(x, kernel, 1, "SAME", "phase_grad"),
                                  conv2d(x, kernel, 1, "SAME", "native"))


def test_output_shift_refuses_strides_and_unknown_impls_are_refused():
    x, kernel = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1))
    for impl in ("output_shift", "swap_wgrad"):
        with pytest.raises(ValueError, match=f"{impl} convolution supports stride 1 only"):
            conv2d(x, kernel, 2, "SAME", impl)
    with pytest.raises(ValueError, match="unknown convolution impl"):
        conv2d(x, kernel, 1, "SAME", "winograd")


def test_auto_rule_off_the_cpu_under_eigen_and_under_ynnpack(monkeypatch):
    monkeypatch.setattr(conv_lib.jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(conv_lib, "onednn_by_default", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")  # YNNPACK convolutions
    assert resolve_conv_impl("auto", 32, 128, 1) == "im2col"   # widening: sub-pixel upsampling
    assert resolve_conv_impl("auto", 3, 32, 2) == "im2col"     # RGB input
    assert resolve_conv_impl("auto", 32, 4, 1) == "output_shift"
    assert resolve_conv_impl("auto", 32, 4, 2) == "native"     # output_shift is stride 1 only
    assert resolve_conv_impl("auto", 32, 32, 1) == "native"
    assert resolve_conv_impl("native", 32, 4, 1) == "native"
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {xla_cpu.FLAG}")
    for c_in, c_out, stride in [(32, 128, 1), (64, 64, 1), (128, 64, 1)]:
        assert resolve_conv_impl("auto", c_in, c_out, stride) == "native"
    assert resolve_conv_impl("auto", 32, 4, 1) == "swap_wgrad"  # narrowing: the RGB+mask output
    # Strided layers: phase_grad for 5x5 kernels, for 3x3 ones only from 64 px on.
    assert resolve_conv_impl("auto", 3, 32, 2, kernel_size=5, size=16) == "phase_grad"
    assert resolve_conv_impl("auto", 64, 64, 2, kernel_size=3, size=32) == "native"
    assert resolve_conv_impl("auto", 64, 64, 2, kernel_size=3, size=64) == "phase_grad"
    assert resolve_conv_impl("im2col", 32, 4, 1) == "im2col"    # an explicit choice is kept
    monkeypatch.setattr(conv_lib, "onednn_by_default", lambda: True)
    assert resolve_conv_impl("auto", 32, 4, 1) == "onednn"
    assert resolve_conv_impl("auto", 3, 32, 2, kernel_size=5, size=64) == "onednn"
    assert resolve_conv_impl("auto", 32, 4, 1, allow_onednn=False) == "swap_wgrad"
    assert resolve_conv_impl("native", 32, 4, 1) == "native"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(conv_lib.jax, "default_backend", lambda: "gpu")
    assert resolve_conv_impl("auto", 32, 4, 1) == "native"
    assert resolve_conv_impl("auto", 32, 32, 2, kernel_size=5, size=128) == "native"


@pytest.mark.parametrize("impl", ["native", "im2col", "output_shift", "phase_grad", "swap_wgrad", "onednn"])
def test_module_has_nn_conv_parameters_and_output(impl):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 5))
    reference = nn.Conv(3, (3, 3), padding="SAME")
    params = reference.init(jax.random.PRNGKey(1), x)
    ours = Conv(3, (3, 3), impl=impl)
    own_params = ours.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, own_params, params)  # same names, shapes and init
    params = jax.tree.map(lambda p: p + 0.1, params)
    np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Conv(3, (3, 3), impl=impl, relu=True).apply(params, x),
                               nn.relu(reference.apply(params, x)), rtol=1e-5, atol=1e-5)


def test_autoencoder_is_the_same_function_under_every_lowering():
    # Strided encoder layers, sub-pixel upsampling and a 4-channel output layer: every lowering path.
    config = config_from_args(f"{SA_CONFIG}:multi_dsprites", {
        **TINY_OVERRIDES, "model.encoder.strides": "(1, 2, 2, 1)", "model.decoder.broadcast_size": "(8, 8)",
        "model.decoder.kernel_sizes": "(5, 3)", "model.decoder.strides": "(2, 2)"})
    image = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3))
    rngs = {"params": jax.random.PRNGKey(1), "slots": jax.random.PRNGKey(2)}
    outputs = {}
    for impl in ("native", "im2col", "phase_grad", "auto", "onednn"):  # auto: phase_grad and swap_wgrad
        config.model.conv_impl = impl
        model = build_autoencoder(config.model)
        with jax.threefry_partitionable(False):  # compiles faster; any random values do
            params = jax.jit(model.init)(rngs, image)

        def loss(p, model=model):
            recon = model.apply(p, image, rngs={"slots": rngs["slots"]})["recon"]
            return jnp.mean((recon - image) ** 2), recon

        (_, recon), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        outputs[impl] = (recon, grads)
    for impl in ("im2col", "phase_grad", "auto", "onednn"):
        np.testing.assert_allclose(outputs[impl][0], outputs["native"][0], rtol=1e-5, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                     outputs[impl][1], outputs["native"][1])
