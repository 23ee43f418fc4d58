import numpy as np
import pytest

from slot_jax.data import generation


def test_example_uniforms_depend_only_on_seed_split_and_index():
    whole = generation.example_uniforms(3, "train", 10, 6, size=5)
    parts = np.concatenate(
        [generation.example_uniforms(3, "train", 10, 2, size=5), generation.example_uniforms(3, "train", 12, 4, size=5)]
    )
    np.testing.assert_array_equal(whole, parts)
    assert not np.array_equal(whole, generation.example_uniforms(3, "val", 10, 6, size=5))
    assert not np.array_equal(whole, generation.example_uniforms(4, "train", 10, 6, size=5))


def test_continued_rng_picks_up_after_the_fixed_draws():
    rng = generation.example_rng(1, "test", 7)
    first, rest = rng.random(4), rng.random(3)
    np.testing.assert_array_equal(generation.example_uniforms(1, "test", 7, 1, size=4)[0], first)
    np.testing.assert_array_equal(generation.continued_rng(1, "test", 7, 4).random(3), rest)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="train, val, test"):
        generation.example_rng(0, "training", 0)


def test_pick_covers_every_choice_and_stays_in_range():
    picked = generation.pick(np.array([0.0, 0.2, 0.5, 0.999999, 1.0]), 4)
    np.testing.assert_array_equal(picked, [0, 0, 2, 3, 3])


def test_renumber_visible_drops_hidden_ids_and_keeps_paint_order():
    paint_ids = np.array([[[0, 2], [2, 4]], [[1, 1], [0, 0]]])
    mask, num_objects = generation.renumber_visible(paint_ids, max_id=5)
    np.testing.assert_array_equal(mask, [[[0, 1], [1, 2]], [[1, 1], [0, 0]]])
    np.testing.assert_array_equal(num_objects, [2, 1])
    assert mask.dtype == np.int32
