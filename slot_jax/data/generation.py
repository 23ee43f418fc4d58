"""Shared pieces of the procedural generators: per-example random streams and mask ids."""
import numpy as np

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one example; it depends only on (seed, split, index)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_IDS)}")
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def example_uniforms(seed: int, split: str, start: int, count: int, size: int) -> np.ndarray:
    """[count, size] uniforms in [0, 1): row j holds the first `size` draws of example start + j.

    Drawing a fixed number of values per example lets the generators work on whole batches
    with array operations while every example stays reproducible on its own.
    """
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
    rows = [example_rng(seed, split, start + j).random(size) for j in range(count)]
    return np.stack(rows) if rows else np.zeros((0, size))


def continued_rng(seed: int, split: str, index: int, size: int) -> np.random.Generator:
    """The stream of one example after its first `size` draws, for rare extra sampling."""
    rng = example_rng(seed, split, index)
    rng.random(size)
    return rng


def pick(uniform: np.ndarray, num_choices) -> np.ndarray:
    """Map uniforms in [0, 1) to integers in [0, num_choices)."""
    return np.minimum((uniform * num_choices).astype(np.int64), np.asarray(num_choices) - 1)


def renumber_visible(paint_ids: np.ndarray, max_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop ids with no visible pixel and renumber the rest 1..n, keeping paint order.

    paint_ids: int [B, H, W], 0 = background. Returns (mask int32 [B, H, W], num_objects [B]).
    """
    batch = paint_ids.shape[0]
    flat_ids = paint_ids.reshape(batch, int(np.prod(paint_ids.shape[1:])))
    present = np.zeros((batch, max_id + 1), dtype=bool)
    present[np.arange(batch)[:, None], flat_ids] = True
    present[:, 0] = False
    new_ids = np.cumsum(present, axis=1) * present
    mask = np.take_along_axis(new_ids, flat_ids, axis=1)
    return mask.reshape(paint_ids.shape).astype(np.int32), present.sum(1).astype(np.int32)
