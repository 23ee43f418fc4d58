import threading

import numpy as np
import pytest

from slot_jax.data.builtin import DatasetInfo, get_dataset
from slot_jax.data.pipeline import BatchIterator, eval_batches

TETROMINOES = get_dataset("tetrominoes")


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def take(iterator, steps):
    with iterator:
        return [next(iterator) for _ in range(steps)]


def test_step_s_covers_its_slice_of_the_stream():
    batches = take(BatchIterator(TETROMINOES, "train", 8, seed=3), 3)
    assert_batches_equal(batches[2], TETROMINOES.generate(3, "train", 16, 8))
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_resuming_reproduces_the_uninterrupted_run():
    uninterrupted = take(BatchIterator(TETROMINOES, "train", 8, seed=3), 5)
    resumed = BatchIterator(TETROMINOES, "train", 8, seed=3, start_step=3)
    assert resumed.step == 3
    for expected in uninterrupted[3:]:
        assert_batches_equal(next(resumed), expected)
    assert resumed.step == 5
    resumed.close()


def test_process_slices_concatenate_to_the_global_batch():
    (global_batch,) = take(BatchIterator(TETROMINOES, "train", 8, seed=1, start_step=2), 1)
    slices = [
        take(BatchIterator(TETROMINOES, "train", 8, seed=1, start_step=2, process_index=p, process_count=4), 1)[0]
        for p in range(4)
    ]
    assert slices[0]["image"].shape[0] == 2
    assert_batches_equal(global_batch, {k: np.concatenate([s[k] for s in slices]) for k in global_batch})


def test_prefetching_does_not_change_the_batches():
    prefetched = take(BatchIterator(TETROMINOES, "val", 4, seed=0, prefetch=3), 3)
    on_demand = take(BatchIterator(TETROMINOES, "val", 4, seed=0, prefetch=0), 3)
    for a, b in zip(prefetched, on_demand):
        assert_batches_equal(a, b)


def test_batch_must_divide_among_processes():
    with pytest.raises(ValueError, match=r"10.*4"):
        BatchIterator(TETROMINOES, "train", 10, seed=0, process_count=4)


def test_close_stops_the_prefetch_thread():
    iterator = BatchIterator(TETROMINOES, "train", 4, seed=0, prefetch=2)
    next(iterator)
    iterator.close()
    assert not iterator._worker.is_alive()
    with pytest.raises(StopIteration):
        next(iterator)


def test_generation_errors_reach_the_consumer():
    def broken(seed, split, start, count):
        raise RuntimeError("generator exploded")

    iterator = BatchIterator(DatasetInfo("broken", (1, 1), 2, broken), "train", 2, seed=0)
    with pytest.raises(RuntimeError, match="exploded"):
        next(iterator)
    assert not iterator._worker.is_alive()


def test_generation_runs_off_the_consumer_thread():
    threads = []

    def recording(seed, split, start, count):
        threads.append(threading.current_thread())
        return TETROMINOES.generate(seed, split, start, count)

    take(BatchIterator(DatasetInfo("recording", (35, 35), 4, recording), "train", 2, seed=0), 2)
    assert threading.current_thread() not in threads


@pytest.mark.parametrize("num_examples, batch_size, expected_batches", [(10, 4, 3), (8, 4, 2), (3, 8, 1), (0, 4, 0)])
def test_eval_batches_cover_exactly_the_requested_examples(num_examples, batch_size, expected_batches):
    batches = list(eval_batches(TETROMINOES, "test", num_examples, batch_size, seed=2))
    assert len(batches) == expected_batches
    for batch in batches:
        assert batch["valid"].dtype == bool and batch["valid"].shape == (batch_size,)
        assert all(value.shape[0] == batch_size for value in batch.values())
        assert (batch["image"][~batch["valid"]] == 0).all()
    if batches:
        valid = {k: np.concatenate([b[k][b["valid"]] for b in batches]) for k in batches[0] if k != "valid"}
        assert_batches_equal(valid, TETROMINOES.generate(2, "test", 0, num_examples))
