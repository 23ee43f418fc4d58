import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SA_CONFIG
from slot_jax.config_loader import load_config
from slot_jax.models.autoencoder import attention_masks, build_autoencoder, reconstruction_loss
from slot_jax.models import decoder as decoder_lib
from slot_jax.models.decoder import SpatialBroadcastDecoder, layer_reach
from slot_jax.models.encoder import CNNEncoder
from slot_jax.models.layers import position_grid


def test_position_grid_holds_distances_to_the_four_borders():
    grid = np.asarray(position_grid(3, 5))
    assert grid.shape == (3, 5, 4)
    np.testing.assert_allclose(grid[0, 0], [0, 0, 1, 1])
    np.testing.assert_allclose(grid[2, 4], [1, 1, 0, 0])
    np.testing.assert_allclose(grid[..., 0] + grid[..., 2], 1.0)


def test_encoder_strides_set_the_feature_grid():
    encoder = CNNEncoder(channels=(8, 8, 8, 8), kernel_sizes=(5, 5, 5, 5), strides=(1, 2, 2, 1),
                         mlp_features=(16, 16))
    out = jax.eval_shape(lambda: encoder.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 128, 128, 3)))[0])
    assert out["features"].shape == (2, 32 * 32, 16)


@pytest.mark.parametrize("broadcast, strides, size", [((8, 8), (2, 2, 2, 2, 1), 128), ((35, 35), (1, 1), 35)])
def test_decoder_outputs_masks_that_sum_to_one_and_mix_the_slot_images(broadcast, strides, size):
    decoder = SpatialBroadcastDecoder(broadcast_size=broadcast, channels=(4,) * len(strides),
                                      kernel_sizes=(3,) * len(strides), strides=strides)
    assert decoder.output_size() == (size, size)
    slots = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    out, _ = decoder.init_with_output(jax.random.PRNGKey(1), slots)
    assert out["recon"].shape == (2, size, size, 3)
    assert out["slot_images"].shape == (2, 3, size, size, 3) and out["masks"].shape == (2, 3, size, size, 1)
    np.testing.assert_allclose(np.asarray(out["masks"]).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["recon"], (out["masks"] * out["slot_images"]).sum(axis=1), atol=1e-5)


def _small_decoder(**fields):
    return SpatialBroadcastDecoder(broadcast_size=(4, 4), channels=(6, 5), kernel_sizes=(3, 5), strides=(2, 1),
                                   **fields)


def test_decoder_in_batch_chunks_is_the_same_function(monkeypatch):
    monkeypatch.setattr(decoder_lib, "FIRST_LAYER_BY_CLASSES", False)  # every layer in chunks, to count them
    slots = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8))  # 8 canvases: chunks of 3, 3 and 2
    params = _small_decoder().init(jax.random.PRNGKey(1), slots)

    def loss(params, decoder):
        out = decoder.apply(params, slots)
        return jnp.sum(out["recon"] ** 2) + jnp.sum(out["masks"] * out["slot_images"][..., :1])

    whole, chunked = _small_decoder(batch_chunk=10**6), _small_decoder(batch_chunk=3)
    convolutions = [jax.jit(lambda p, d=d: d.apply(p, slots)["recon"]).lower(params).as_text().count(
        "stablehlo.convolution") for d in (whole, chunked)]
    assert convolutions[1] == 3 * convolutions[0] > 0
    for key in ("recon", "slot_images", "masks"):
        np.testing.assert_allclose(chunked.apply(params, slots)[key], whole.apply(params, slots)[key],
                                   rtol=1e-6, atol=1e-6)
    expected, got = (jax.jit(jax.grad(lambda p, d=d: loss(p, d)))(params) for d in (whole, chunked))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride", [(k, s) for k in range(1, 8) for s in (1, 2, 3)])
def test_layer_reach_is_the_widest_offset_an_output_pixel_reads(kernel, stride):
    # The response of the layer to an impulse at input pixel m covers the output pixels that read
    # m; output pixel o reads m at offset m - o // stride.
    size, m = 3 * kernel + 3, (3 * kernel + 3) // 2
    impulse = jnp.zeros((1, size, 1, 1)).at[0, m].set(1.0)
    w = jnp.ones((kernel, 1, 1, 1))
    if stride == 1:
        y = jax.lax.conv_general_dilated(impulse, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
        y = jax.lax.conv_transpose(impulse, w, (stride, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    reads = np.nonzero(np.asarray(y[0, :, 0, 0]))[0]
    assert layer_reach(kernel, stride) == max(abs(m - o // stride) for o in reads)


# Every upsampling lowering; a stride-1 first layer; non-square grids; a grid too small for the
# border classes (3 < 2 * reach + 1), where the first layer runs on every canvas.
@pytest.mark.parametrize("upsample,broadcast,kernels,strides", [
    ("phases", (5, 7), (5, 3), (2, 1)), ("subpixel", (5, 7), (5, 3), (2, 1)), ("transpose", (5, 7), (4, 3), (2, 1)),
    ("phases", (6, 6), (3, 5), (1, 2)), ("phases", (3, 4), (5, 3), (1, 2)), ("phases", (4, 4), (3, 3), (3, 1))])
def test_first_layer_by_border_classes_is_the_same_function(upsample, broadcast, kernels, strides, monkeypatch):
    slots = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    decoder = SpatialBroadcastDecoder(broadcast_size=broadcast, channels=(6, 5), kernel_sizes=kernels,
                                      strides=strides, upsample=upsample)
    params = decoder.init(jax.random.PRNGKey(1), slots)
    params = jax.tree.map(lambda p: p + 0.05, params)  # non-zero biases

    def run(by_classes):
        monkeypatch.setattr(decoder_lib, "FIRST_LAYER_BY_CLASSES", by_classes)
        loss = lambda p, s: jnp.sum(decoder.apply(p, s)["recon"] ** 2)
        out = decoder.apply(params, slots)
        return out, jax.grad(loss, argnums=(0, 1))(params, slots)

    (out, grads), (expected_out, expected_grads) = run(True), run(False)
    for key in ("recon", "slot_images", "masks"):
        np.testing.assert_allclose(out[key], expected_out[key], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):  # float32 sums of ~1e3
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_decoder_chunks_by_cache_size_only_where_they_pay(monkeypatch):
    from slot_jax.models import conv as conv_module

    shape = dict(broadcast_size=(8, 8), channels=(32, 32, 32), strides=(2, 2, 2), kernel_sizes=(5, 5, 5))
    decoder = SpatialBroadcastDecoder(**shape)
    monkeypatch.setattr(conv_module, "chunks_pay", lambda: True)
    assert decoder._chunk(224) == 16  # 64 x 64 x 32 floats a canvas: 16 of them in 8 MB
    assert decoder._chunk(20) == 20  # 16 would leave a chunk of 4
    assert SpatialBroadcastDecoder(**shape, batch_chunk=5)._chunk(224) == 5
    monkeypatch.setattr(conv_module, "chunks_pay", lambda: False)  # GPU, TPU, several devices
    assert decoder._chunk(224) == 224


def test_autoencoder_returns_named_outputs_and_a_per_example_loss():
    config = load_config(f"{SA_CONFIG}:quick")
    model = build_autoencoder(config.model)
    image = jax.random.uniform(jax.random.PRNGKey(0), (2, 35, 35, 3))
    out, _ = model.init_with_output({"params": jax.random.PRNGKey(0), "slots": jax.random.PRNGKey(1)}, image)
    k, d = config.model.num_slots, config.model.slot_size
    assert set(out) == {"recon", "slot_images", "masks", "slots", "attn"}
    assert out["slots"].shape == (2, k, d) and out["attn"].shape == (2, k, 35, 35)
    loss = reconstruction_loss(out, image)
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss[1], np.mean((np.asarray(out["recon"][1]) - np.asarray(image[1])) ** 2),
                               rtol=1e-5)


def test_attention_masks_upsample_bilinearly_and_keep_the_slot_sum():
    attention = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8, 8)), axis=1)
    masks = np.asarray(attention_masks(attention, (32, 32)))
    assert masks.shape == (2, 5, 32, 32)
    np.testing.assert_allclose(masks.sum(axis=1), 1.0, atol=1e-5)
