import numpy as np
import pytest

from generator_checks import assert_deterministic_and_chunkable, assert_generator_contract, assert_streams_differ
from slot_jax.data import generation, multi_dsprites


@pytest.fixture(scope="module")
def sample():
    uniforms = generation.example_uniforms(0, "train", 0, 200, multi_dsprites._NUM_UNIFORMS)
    layout = multi_dsprites.sample_layout(uniforms)
    return layout, multi_dsprites.render(layout)


def test_contract_and_determinism(sample):
    _, batch = sample
    assert_generator_contract(batch, 200, (64, 64), max_objects=5)
    np.testing.assert_array_equal(batch["image"], multi_dsprites.generate(0, "train", 0, 200)["image"])
    assert_deterministic_and_chunkable(multi_dsprites.generate)
    assert_streams_differ(multi_dsprites.generate)


def test_two_to_five_sprites_with_hidden_ones_dropped(sample):
    layout, batch = sample
    assert set(layout["count"]) == {2, 3, 4, 5}
    assert (batch["num_objects"] <= layout["count"]).all()
    assert (batch["num_objects"] >= 1).all()
    assert (batch["num_objects"] == layout["count"]).mean() > 0.8


def test_background_is_one_random_grey_per_image(sample):
    layout, batch = sample
    background = multi_dsprites.background(layout)
    is_background = batch["mask"] == 0
    np.testing.assert_array_equal(batch["image"][is_background], background[is_background])
    assert (background == background[:, :1, :1, :1]).all()
    assert len(np.unique(layout["background"])) > 50


def test_each_sprite_is_one_saturated_colour(sample):
    _, batch = sample
    for image, mask, n in zip(batch["image"][:50], batch["mask"][:50], batch["num_objects"][:50]):
        for sprite in range(1, n + 1):
            colours = np.unique(image[mask == sprite], axis=0).astype(int)
            assert len(colours) == 1
            assert colours[0].max() - colours[0].min() >= 0.6 * 0.6 * 255 - 1


def test_stamps_grow_with_scale_and_change_with_orientation():
    stamps = multi_dsprites.sprite_stamps()
    areas = stamps.sum((-1, -2))
    assert stamps.shape == (3, 6, 40, 32, 32)
    assert (np.diff(areas, axis=1) > 0).all()
    # Only the square repeats within a quarter turn; everything else turns visibly.
    assert not (stamps[1:, :, 0] == stamps[1:, :, 10]).all((-1, -2)).any()
    # No stamp is clipped by its own box.
    assert not stamps[..., [0, -1], :].any() and not stamps[..., :, [0, -1]].any()


def test_hsv_to_rgb_primaries():
    hsv = np.array([[0.0, 1.0, 1.0], [1 / 3, 1.0, 1.0], [2 / 3, 1.0, 1.0], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(multi_dsprites.hsv_to_rgb(hsv), [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])
