"""The KL VAE: latent shapes per downsampling factor, the KL term against its closed form,
deterministic encoding, and finite gradients."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from slot_jax.errors import UserError
from slot_jax.models.vae import VAE, build_vae, kl_divergence, vae_loss

TINY = dict(channels=(8, 16), num_groups=4)


def _shapes(model, image_shape, **kwargs):
    """Output shapes of `model(image)` without compiling anything."""
    image = jnp.zeros(image_shape)
    rngs = {"params": jax.random.PRNGKey(0), "latent": jax.random.PRNGKey(1)}
    out = jax.eval_shape(lambda: model.init_with_output(rngs, image, **kwargs)[0])
    return {name: value.shape for name, value in out.items()}


@pytest.fixture(scope="module")
def tiny():
    """A factor-2 VAE, its parameters and a batch of images, initialised once for the module."""
    model = VAE(**TINY)
    image = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 12, 3))
    # The partitionable threefry lowering (jax's default) compiles ~5x slower on XLA:CPU; any
    # random values do here.
    with jax.threefry_partitionable(False):
        params = jax.jit(lambda key: model.init(key, image, sample_posterior=False))(jax.random.PRNGKey(1))
    return model, params, image


@pytest.mark.parametrize("channels, image_size, latent_size", [
    ((8, 16), (16, 16), (8, 8)),
    ((8, 8, 16), (16, 16), (4, 4)),
    ((8, 16), (16, 12), (8, 6)),
    ((8, 8, 16), (8, 24), (2, 6)),
])
def test_latents_are_downsampled_by_two_per_extra_level(channels, image_size, latent_size):
    model = VAE(channels=channels, num_groups=4, latent_channels=4)
    assert model.downsampling_factor == image_size[0] // latent_size[0]
    shapes = _shapes(model, (2, *image_size, 3))
    for name in ("mean", "logvar", "latent"):
        assert shapes[name] == (2, *latent_size, 4)
    assert shapes["recon"] == (2, *image_size, 3)


def test_decoder_maps_latents_back_to_image_size():
    model = VAE(channels=(8, 8, 16), num_groups=4, latent_channels=5)
    image = jnp.zeros((1, 16, 16, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image, sample_posterior=False))
    decoded = jax.eval_shape(lambda v, z: model.apply(v, z, method=VAE.decode), variables,
                             jnp.zeros((3, 4, 6, 5)))
    assert decoded.shape == (3, 16, 24, 3)


def test_kl_matches_the_closed_form_per_example():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4, 5, 2))
    logvar = rng.normal(size=(3, 4, 5, 2))
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, summed over dimensions.
    sigma = np.exp(0.5 * logvar)
    expected = (np.log(1.0 / sigma) + (sigma**2 + mean**2) / 2 - 0.5).reshape(3, -1).sum(-1)
    kl = kl_divergence(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32))
    assert kl.shape == (3,)
    np.testing.assert_allclose(kl, expected, rtol=1e-5)
    np.testing.assert_array_equal(kl_divergence(jnp.zeros((2, 3, 3, 4)), jnp.zeros((2, 3, 3, 4))), 0.0)


def test_loss_terms_are_per_example_and_weighted():
    rng = np.random.default_rng(1)
    image = rng.random((2, 4, 4, 3)).astype(np.float32)
    outputs = {"recon": rng.random((2, 4, 4, 3)).astype(np.float32),
               "mean": rng.normal(size=(2, 2, 2, 3)).astype(np.float32),
               "logvar": rng.normal(size=(2, 2, 2, 3)).astype(np.float32)}
    loss = vae_loss(outputs, image, kl_weight=0.1)
    expected_recon = ((outputs["recon"] - image) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(loss["recon"], expected_recon, rtol=1e-6)
    np.testing.assert_allclose(loss["kl"], kl_divergence(outputs["mean"], outputs["logvar"]), rtol=1e-6)
    np.testing.assert_allclose(loss["total"], expected_recon + 0.1 * np.asarray(loss["kl"]), rtol=1e-6)


def test_encoding_is_deterministic_and_the_posterior_mean_is_used_without_sampling(tiny):
    model, params, image = tiny
    encode = jax.jit(lambda p, x: model.apply(p, x, method=VAE.encode))
    first, second = encode(params, image), encode(params, image)
    np.testing.assert_array_equal(first["mean"], second["mean"])
    np.testing.assert_array_equal(first["logvar"], second["logvar"])

    forward = jax.jit(lambda p, x, key: model.apply(p, x, sample_posterior=False, rngs={"latent": key}))
    out = forward(params, image, jax.random.PRNGKey(7))
    np.testing.assert_array_equal(out["latent"], out["mean"])
    np.testing.assert_allclose(out["mean"], first["mean"], atol=1e-6)
    decoded = jax.jit(lambda p, z: model.apply(p, z, method=VAE.decode))(params, out["mean"])
    np.testing.assert_allclose(out["recon"], decoded, atol=1e-6)


def test_sampling_draws_noise_from_the_latent_stream(tiny):
    model, params, image = tiny
    sample = jax.jit(lambda p, x, key: model.apply(p, x, rngs={"latent": key}))
    a, b = sample(params, image, jax.random.PRNGKey(1)), sample(params, image, jax.random.PRNGKey(2))
    assert np.abs(np.asarray(a["latent"] - b["latent"])).max() > 1e-3
    # The noise is scaled by the posterior standard deviation exp(logvar / 2).
    noise = (a["latent"] - a["mean"]) * jnp.exp(-0.5 * a["logvar"])
    assert abs(float(jnp.mean(noise))) < 0.3 and 0.7 < float(jnp.std(noise)) < 1.3


def test_gradients_of_the_loss_are_finite_and_reach_both_halves(tiny):
    model, params, image = tiny

    def total(p):
        outputs = model.apply(p, image, rngs={"latent": jax.random.PRNGKey(3)})
        return vae_loss(outputs, image, kl_weight=1e-3)["total"].mean()

    grads = jax.jit(jax.grad(total))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    for half in ("encoder", "decoder"):
        norm = sum(float(jnp.sum(g**2)) for g in jax.tree_util.tree_leaves(grads["params"][half]))
        assert norm > 0, half


def test_batch_chunks_compute_the_same_vae(tiny):
    _, params, _ = tiny
    image = jax.random.uniform(jax.random.PRNGKey(4), (5, 16, 12, 3))  # chunks of 2, 2 and 1
    whole, chunked = VAE(**TINY, batch_chunk=100), VAE(**TINY, batch_chunk=2)

    def total(p, model):
        outputs = model.apply(p, image, rngs={"latent": jax.random.PRNGKey(3)})
        return vae_loss(outputs, image, kl_weight=1e-3)["total"].mean()

    for method in ("encode", "decode"):
        inputs = image if method == "encode" else jnp.zeros((5, 8, 6, 3))
        counts = [jax.jit(lambda p, x, m=m: m.apply(p, x, method=method)).lower(params, inputs).as_text().count(
            "stablehlo.convolution") for m in (whole, chunked)]
        assert counts[1] == 3 * counts[0] > 0, method
    expected, got = (jax.jit(jax.value_and_grad(lambda p, m=m: total(p, m)))(params) for m in (whole, chunked))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got[1], expected[1])


def test_batch_chunks_by_cache_size_only_where_they_pay(monkeypatch):
    from slot_jax.models import conv as conv_module

    model = VAE(channels=(64, 128, 128))
    monkeypatch.setattr(conv_module, "chunks_pay", lambda: True)
    assert model._chunk(32, 128, 128) == 8   # 128 x 128 x 64 floats, 4 MB an image: at least 8
    assert model._chunk(32, 64, 64) == 8     # 1 MB: 8 of them in 8 MB
    assert model._chunk(12, 64, 64) == 12
    monkeypatch.setattr(conv_module, "chunks_pay", lambda: False)
    assert model._chunk(32, 128, 128) == 32


def test_num_groups_must_divide_every_level_width():
    with pytest.raises(UserError, match="num_groups=8 must divide every channel count, but not 12") as error:
        VAE(channels=(16, 12), num_groups=8)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="at least one entry"):
        VAE(channels=())


def test_image_size_must_be_a_multiple_of_the_downsampling_factor():
    with pytest.raises(UserError, match="18x16 must be divisible by 4"):
        _shapes(VAE(channels=(8, 8, 16), num_groups=4), (1, 18, 16, 3))


def test_build_vae_from_config():
    config = ml_collections.ConfigDict(dict(channels=(8, 16, 32), num_res_blocks=2, latent_channels=4,
                                            num_groups=4, conv_impl="native"))
    model = build_vae(config)
    assert model == VAE(channels=(8, 16, 32), num_res_blocks=2, latent_channels=4, num_groups=4,
                        conv_impl="native")
    assert _shapes(model, (1, 16, 16, 3), sample_posterior=False)["latent"] == (1, 4, 4, 4)
