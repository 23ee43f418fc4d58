"""Checks shared by the generator tests."""
import numpy as np


def assert_generator_contract(batch: dict, count: int, size: tuple[int, int], max_objects: int) -> None:
    image, mask, num_objects = batch["image"], batch["mask"], batch["num_objects"]
    assert image.shape == (count, *size, 3) and image.dtype == np.uint8
    assert mask.shape == (count, *size) and mask.dtype == np.int32
    assert num_objects.shape == (count,) and num_objects.dtype == np.int32
    assert (num_objects <= max_objects).all()
    for m, n in zip(mask, num_objects):
        # Every pixel holds exactly one id in 0..n, and every object id owns a pixel.
        assert m.min() >= 0 and m.max() <= n
        assert (np.bincount(m.ravel(), minlength=n + 1)[1:] > 0).all()


def assert_deterministic_and_chunkable(generate) -> None:
    first = generate(5, "train", 0, 10)
    again = generate(5, "train", 0, 10)
    halves = [generate(5, "train", 0, 5), generate(5, "train", 5, 5)]
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        np.testing.assert_array_equal(first[key], np.concatenate([h[key] for h in halves]))


def assert_streams_differ(generate) -> None:
    streams = [(0, "train"), (0, "val"), (0, "test"), (1, "train")]
    images = [generate(seed, split, 0, 4)["image"] for seed, split in streams]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            # No example is shared between streams.
            assert not (images[i][:, None] == images[j][None]).all((2, 3, 4)).any()
