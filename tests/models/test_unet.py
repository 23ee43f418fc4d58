"""The slot-conditioned UNet: shapes, zero output at initialisation, invariance to the order of
the slots, dependence on t and on the slots, the sinusoidal embedding, and config errors."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import needs_onednn, needs_onednn_bf16
from slot_jax import onednn
from slot_jax.errors import UserError
from slot_jax.models.unet import SlotUNet, TimeEmbedding, build_unet, sinusoidal_embedding

TINY = dict(channels=16, channel_mult=(1, 2), attention_levels=(1,), num_heads=2, num_groups=4)


def _inputs(latent_shape=(2, 8, 8, 3), num_slots=3, slot_size=8, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x_t = jax.random.normal(k1, latent_shape)
    t = jnp.arange(latent_shape[0], dtype=jnp.int32) * 37 + 5
    slots = jax.random.normal(k2, (latent_shape[0], num_slots, slot_size))
    return x_t, t, slots


def _output_shape(model, x_t, t, slots):
    """Output shape of `model(x_t, t, slots)` without compiling anything."""
    return jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x_t, t, slots)[0]).shape


@pytest.fixture(scope="module")
def tiny():
    """The tiny UNet, its initial and its perturbed parameters, and a jitted forward pass."""
    model = SlotUNet(**TINY)
    x_t, t, slots = _inputs()
    # The partitionable threefry lowering (jax's default) compiles ~5x slower on XLA:CPU; any
    # random values do here.
    with jax.threefry_partitionable(False):
        initial = jax.jit(model.init)(jax.random.PRNGKey(0), x_t, t, slots)
    leaves, treedef = jax.tree_util.tree_flatten(initial)
    rng = np.random.default_rng(0)
    perturbed = jax.tree_util.tree_unflatten(
        treedef, [leaf + 0.05 * rng.normal(size=leaf.shape).astype(np.float32) for leaf in leaves])
    return model, initial, perturbed, jax.jit(model.apply)


@pytest.mark.parametrize("latent_shape", [(2, 8, 8, 3), (2, 16, 16, 4), (1, 8, 12, 3)])
def test_prediction_has_the_shape_of_the_noisy_latent(latent_shape):
    assert _output_shape(SlotUNet(**TINY), *_inputs(latent_shape)) == latent_shape


def test_out_channels_and_three_levels():
    model = SlotUNet(channels=8, channel_mult=(1, 2, 2), attention_levels=(0, 2), num_heads=2,
                     num_groups=4, out_channels=6)
    assert _output_shape(model, *_inputs((2, 16, 8, 3), num_slots=5, slot_size=4)) == (2, 16, 8, 6)


def test_prediction_is_zero_at_initialisation_and_not_after_training(tiny):
    model, initial, perturbed, forward = tiny
    x_t, t, slots = _inputs()
    np.testing.assert_array_equal(forward(initial, x_t, t, slots), 0.0)
    assert float(jnp.abs(forward(perturbed, x_t, t, slots)).max()) > 1e-2


def test_prediction_ignores_the_order_of_the_slots(tiny):
    model, _, params, forward = tiny
    x_t, t, slots = _inputs()
    out = forward(params, x_t, t, slots)
    permuted = forward(params, x_t, t, slots[:, np.array([2, 0, 1])])
    np.testing.assert_allclose(permuted, out, atol=1e-5, rtol=1e-5)


def test_prediction_depends_on_the_time_step_and_on_the_slots(tiny):
    model, _, params, forward = tiny
    x_t, t, slots = _inputs()
    out = forward(params, x_t, t, slots)
    assert float(jnp.abs(forward(params, x_t, t + 100, slots) - out).max()) > 1e-3
    other_slots = _inputs(seed=1)[2]
    assert float(jnp.abs(forward(params, x_t, t, other_slots) - out).max()) > 1e-3
    # Changing one example's slots leaves the other example's prediction alone.
    changed = forward(params, x_t, t, slots.at[1].set(other_slots[1]))
    np.testing.assert_allclose(changed[0], out[0], atol=1e-6)
    assert float(jnp.abs(changed[1] - out[1]).max()) > 1e-3


def test_gradients_are_finite_for_parameters_and_slots(tiny):
    model, _, params, _ = tiny
    x_t, t, slots = _inputs()
    eps = jax.random.normal(jax.random.PRNGKey(5), x_t.shape)

    def loss(p, s):
        return jnp.mean(jnp.square(model.apply(p, x_t, t, s) - eps))

    grad_params, grad_slots = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, slots)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad_params))
    assert bool(jnp.all(jnp.isfinite(grad_slots))) and float(jnp.abs(grad_slots).max()) > 0


@needs_onednn
def test_onednn_convolutions_compute_the_same_unet(tiny):
    _, _, params, _ = tiny
    x_t, t, slots = _inputs()
    eps = jax.random.normal(jax.random.PRNGKey(5), x_t.shape)
    results = {}
    for impl in ("native", "onednn"):
        model = SlotUNet(**TINY, conv_impl=impl)
        loss = lambda p: jnp.mean(jnp.square(model.apply(p, x_t, t, slots) - eps))
        results[impl] = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(results["onednn"][0], results["native"][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
                 results["onednn"][1], results["native"][1])


def _conv_operand_dtypes(fn, *args) -> set:
    """The operand dtypes of every XLA convolution and every oneDNN call in fn's compiled HLO."""
    hlo = jax.jit(fn).lower(*args).as_text()
    lines = [line for line in hlo.splitlines()
             if "stablehlo.convolution" in line or (onednn.TARGET in line and "custom_call" in line)]
    # The operand types follow the last "->" (dim_numbers has one of its own).
    return {dtype for line in lines for dtype in ("f32", "bf16") if f"x{dtype}>" in line.rsplit("->", 1)[0]}


def _dots(model, params, x_t, t, slots) -> list:
    """(operand dtype, result dtype) of every dot in the lowered gradient of a loss of `model`."""
    loss = lambda p: jnp.mean(jnp.square(model.apply(p, x_t, t, slots)))  # noqa: E731
    hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
    types = [line.rsplit(" : ", 1)[1] for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    return [(line.split(">", 1)[0].rsplit("x", 1)[1], line.rsplit("x", 1)[1].rstrip(">")) for line in types]


def test_bfloat16_runs_the_dense_layers_in_bf16_and_the_attention_scores_in_float32(tiny):
    _, _, params, _ = tiny
    inputs = _inputs()
    dots32 = _dots(SlotUNet(**TINY), params, *inputs)
    dots16 = _dots(SlotUNet(**TINY, dtype=jnp.bfloat16), params, *inputs)
    assert set(dots32) == {("f32", "f32")}
    # The same dots, the dense layers' now on bf16 operands, every result float32; the attention
    # scores and weighted sums and the time embedding stay float32.
    assert len(dots16) == len(dots32) and set(dots16) == {("bf16", "f32"), ("f32", "f32")}
    # At least the forward, kernel gradient and input gradient of the 11 dense layers of each of
    # the 4 transformer blocks (proj_in, q, k, v and out of both attentions, ff in and out,
    # proj_out), less the input gradients of the cross-attention's key and value (the slots).
    assert dots16.count(("bf16", "f32")) >= 4 * (3 * 11 - 2)


@pytest.mark.parametrize("impl", ["native", pytest.param("onednn", marks=needs_onednn_bf16)])
def test_bfloat16_convolutions_keep_the_unet_close_to_float32(tiny, impl):
    _, _, params, _ = tiny
    x_t, t, slots = _inputs()
    eps = jax.random.normal(jax.random.PRNGKey(5), x_t.shape)
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = SlotUNet(**TINY, conv_impl=impl, dtype=dtype)
        loss = lambda p: jnp.mean(jnp.square(model.apply(p, x_t, t, slots) - eps))  # noqa: E731
        prediction = jax.jit(model.apply)(params, x_t, t, slots)
        results[dtype] = prediction, *jax.jit(jax.value_and_grad(loss))(params)
        # Every convolution (forward and backward) reads operands of the compute dtype.
        want = {"bf16"} if dtype == jnp.bfloat16 else {"f32"}
        assert _conv_operand_dtypes(jax.value_and_grad(loss), params) == want
    (out32, loss32, grads32), (out16, loss16, grads16) = results[jnp.float32], results[jnp.bfloat16]
    assert out16.dtype == jnp.float32 and not np.array_equal(out16, out32)  # it did compute in bf16
    assert float(jnp.abs(out16 - out32).max()) < 0.03 * float(jnp.abs(out32).max())
    assert abs(float(loss16 - loss32)) < 0.02 * float(loss32)
    flat32, flat16 = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(g)]) for g in (grads32, grads16))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert float(flat32 @ flat16 / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))) > 0.99


def test_batch_chunks_compute_the_same_unet():
    # One level keeps the compilations short; it has every kind of block.
    fields = dict(channels=8, channel_mult=(1,), attention_levels=(0,), num_heads=2, num_groups=4)
    x_t, t, slots = _inputs((3, 4, 4, 3))  # chunks of 2 and 1
    whole, chunked = SlotUNet(**fields, batch_chunk=100), SlotUNet(**fields, batch_chunk=2)
    shapes = jax.eval_shape(chunked.init, jax.random.PRNGKey(0), x_t, t, slots)
    assert jax.tree.structure(shapes) == jax.tree.structure(jax.eval_shape(whole.init, jax.random.PRNGKey(0),
                                                                           x_t, t, slots))
    rng = np.random.default_rng(0)  # random weights: the zero-initialised output conv would hide everything
    params = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), jnp.float32), shapes)
    lowered = [jax.jit(m.apply).lower(params, x_t, t, slots) for m in (whole, chunked)]
    assert lowered[1].as_text().count("stablehlo.convolution") == 2 * lowered[0].as_text().count(
        "stablehlo.convolution") > 0
    # The same parameters give the same function, so the same gradients: autodiff of the chunks'
    # slices and concatenation is exact (the decoder's test checks gradients too).
    whole_out, chunked_out = (low.compile()(params, x_t, t, slots) for low in lowered)
    assert float(jnp.abs(whole_out).max()) > 0
    np.testing.assert_allclose(chunked_out, whole_out, rtol=1e-5, atol=1e-6)


def test_batch_chunks_by_cache_size_only_where_they_pay(monkeypatch):
    from slot_jax.models import conv as conv_module

    model = SlotUNet(channels=64, channel_mult=(1, 2, 4))
    latents = jnp.zeros((32, 32, 32, 3))  # level 0: 32 x 32 x (64 + 64 skip) floats, 512 KB an example
    monkeypatch.setattr(conv_module, "chunks_pay", lambda: True)
    assert model._chunk(latents) == 16
    assert model._chunk(latents[:8]) == 8
    assert SlotUNet(batch_chunk=4)._chunk(latents) == 4
    monkeypatch.setattr(conv_module, "chunks_pay", lambda: False)
    assert model._chunk(latents) == 32


@pytest.mark.parametrize("dim", [8, 7, 32])
def test_sinusoidal_embedding_matches_the_formula(dim):
    t = np.array([0, 1, 17, 999])
    half = dim // 2
    frequencies = 10000.0 ** (-np.arange(half) / half)
    angles = t[:, None] * frequencies[None, :]
    expected = np.concatenate([np.cos(angles), np.sin(angles), np.zeros((4, dim % 2))], axis=-1)
    np.testing.assert_allclose(sinusoidal_embedding(jnp.asarray(t), dim), expected, atol=2e-4)
    np.testing.assert_allclose(sinusoidal_embedding(jnp.asarray(t, jnp.float32), dim), expected, atol=2e-4)
    np.testing.assert_allclose(sinusoidal_embedding(jnp.array([2.5]), dim, max_period=100.0)[0, :half],
                               np.cos(2.5 * 100.0 ** (-np.arange(half) / half)), atol=1e-6)


def test_time_embedding_is_an_mlp_of_the_sinusoid():
    embedding = TimeEmbedding(sinusoid_dim=16, features=64)
    out = jax.eval_shape(lambda: embedding.init_with_output(jax.random.PRNGKey(0), jnp.arange(3))[0])
    assert out.shape == (3, 64)


@pytest.mark.parametrize("fields, message", [
    (dict(num_groups=8, channels=12), "num_groups=8 must divide every channel count, but not 12"),
    (dict(attention_levels=(1, 2)), r"attention_levels \[1, 2\] must lie in 0..1"),
    (dict(attention_levels=(-1,)), "must lie in 0..1"),
    (dict(num_heads=3), "num_heads=3 must divide the width of every attention block"),
    (dict(channel_mult=()), "channel_mult needs at least one entry"),
])
def test_bad_configs_raise_a_one_line_error(fields, message):
    with pytest.raises(UserError, match=message) as error:
        SlotUNet(**{**TINY, **fields})
    assert "\n" not in str(error.value)


def test_latent_size_must_be_a_multiple_of_the_downsampling_factor():
    with pytest.raises(UserError, match="7x8 must be divisible by 2"):
        _output_shape(SlotUNet(**TINY), *_inputs((1, 7, 8, 3)))


def test_build_unet_from_config():
    config = ml_collections.ConfigDict(dict(
        channels=16, channel_mult=(1, 2), num_res_blocks=2, attention_levels=(1,), num_heads=2,
        num_groups=4, out_channels=0, conv_impl="native"))
    model = build_unet(config)
    assert model == SlotUNet(channels=16, channel_mult=(1, 2), num_res_blocks=2, attention_levels=(1,),
                             num_heads=2, num_groups=4, out_channels=0, conv_impl="native")
    assert _output_shape(model, *_inputs()) == (2, 8, 8, 3)  # out_channels 0: as many as the latents
