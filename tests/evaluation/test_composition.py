"""Slot library, compositional sampling and decoding through the common decoder interface."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.evaluation.composition import (LibraryError, SlotLibrary, build_slot_library, decode_in_batches,
                                             sample_slot_sets, save_compositions)


@pytest.fixture(scope="module")
def library():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (6, 4))
    slots = centres[rng.integers(0, 6, (40, 3))] + rng.normal(0, 0.1, (40, 3, 4))
    return build_slot_library(slots.astype(np.float32), 6, jax.random.PRNGKey(0), meta={"step": 7})


def _rows(array):
    return {tuple(np.round(r, 5)) for r in np.asarray(array).reshape(-1, np.asarray(array).shape[-1])}


def test_library_clusters_every_slot_and_round_trips(library, tmp_path):
    assert library.slots.shape == (40, 3, 4) and library.labels.shape == (120,)
    assert set(library.labels.tolist()) == set(range(6))
    library.save(tmp_path / "lib.npz")
    loaded = SlotLibrary.load(tmp_path / "lib.npz", slot_size=4)
    np.testing.assert_array_equal(loaded.slots, library.slots)
    np.testing.assert_array_equal(loaded.labels, library.labels)
    assert loaded.meta == {"step": 7} and loaded.inertia == pytest.approx(library.inertia)


def test_library_from_another_model_or_corrupt_is_refused(library, tmp_path):
    library.save(tmp_path / "lib.npz")
    with pytest.raises(LibraryError, match="size 4, the model's are 8"):
        SlotLibrary.load(tmp_path / "lib.npz", slot_size=8)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(LibraryError, match="unreadable"):
        SlotLibrary.load(tmp_path / "bad.npz")
    with pytest.raises(LibraryError, match="not found"):
        SlotLibrary.load(tmp_path / "missing.npz")


def test_cluster_sampling_draws_library_slots_from_distinct_clusters(library):
    sets = sample_slot_sets(library, 200, jax.random.PRNGKey(1), mode="cluster")
    assert sets.shape == (200, 3, 4)
    assert _rows(sets) <= _rows(library.slots)
    flat = library.slots.reshape(-1, 4)
    index = {tuple(np.round(r, 5)): i for i, r in enumerate(flat)}
    labels = np.array([[library.labels[index[tuple(np.round(s, 5))]] for s in one] for one in sets])
    assert all(len(set(row)) == 3 for row in labels)  # 6 clusters >= 3 slots: no repeats
    counts = np.bincount(labels.ravel(), minlength=6)
    assert counts.min() > 0.6 * counts.mean()  # clusters chosen uniformly, not by size
    np.testing.assert_array_equal(sets, sample_slot_sets(library, 200, jax.random.PRNGKey(1), mode="cluster"))
    assert not np.array_equal(sets, sample_slot_sets(library, 200, jax.random.PRNGKey(2), mode="cluster"))


def test_centre_and_per_position_sampling(library):
    centres = sample_slot_sets(library, 20, jax.random.PRNGKey(0), mode="centre")
    assert _rows(centres) <= _rows(library.centres)
    positions = sample_slot_sets(library, 20, jax.random.PRNGKey(0), mode="per_position")
    for k in range(3):
        assert _rows(positions[:, k]) <= _rows(library.slots[:, k])
    with pytest.raises(ValueError, match="sampling mode"):
        sample_slot_sets(library, 2, jax.random.PRNGKey(0), mode="nearest")


def test_more_slots_than_clusters_repeats_clusters(library):
    sets = sample_slot_sets(library, 5, jax.random.PRNGKey(0), mode="centre", num_slots=9)
    assert sets.shape == (5, 9, 4)


def test_decode_in_batches_keeps_order_and_count_with_a_fixed_batch_shape():
    shapes = []

    def decode(slots, key):
        shapes.append(slots.shape)
        return jnp.broadcast_to(slots[:, :1, :1, None] / 10.0, (slots.shape[0], 2, 2, 3))

    sets = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((7, 2, 1), np.float32)
    images = decode_in_batches(decode, sets, jax.random.PRNGKey(0), batch_size=3)
    assert images.shape == (7, 2, 2, 3) and set(shapes) == {(3, 2, 1)}
    np.testing.assert_allclose(images[:, 0, 0, 0], np.arange(7) / 10.0)


def test_decode_in_batches_reports_progress_and_never_pads_beyond_the_count():
    shapes, done = [], []

    def decode(slots, key):
        shapes.append(slots.shape)
        return jnp.zeros((slots.shape[0], 2, 2, 3))

    sets = np.zeros((7, 2, 1), np.float32)
    decode_in_batches(decode, sets, jax.random.PRNGKey(0), batch_size=3, on_batch=done.append)
    assert done == [3, 6, 7]
    shapes.clear()
    images = decode_in_batches(decode, sets[:5], jax.random.PRNGKey(0), batch_size=32)
    assert images.shape == (5, 2, 2, 3) and shapes == [(5, 2, 1)]  # one batch of 5, not 32


def test_save_compositions_writes_png_and_npz(tmp_path):
    images = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    paths = save_compositions(tmp_path, "comp", images, np.zeros((5, 3, 4)), columns=4, min_cell=8)
    with np.load(paths["npz"]) as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape == (5, 8, 8, 3)
    assert (tmp_path / "comp.png").stat().st_size > 0
