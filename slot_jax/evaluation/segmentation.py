"""Segmentation metrics on batches: ARI, FG-ARI, mean best overlap (mBO) and Hungarian mIoU.

All metrics start from one per-image contingency table `table[b, i, j]`: the number of
pixels of image b in predicted segment i and true segment j (true id 0 is background).
ARI uses the whole table, FG-ARI the table without the background column, and mBO the
intersections and segment sizes it holds.

Degenerate rule for ARI / FG-ARI (identical to sklearn's `adjusted_rand_score`):
the denominator `max - expected` is zero exactly when both partitions are a single
cluster, both are all singletons, or at most one pixel is counted. The partitions are
then identical and the score is 1.0 (sklearn returns 1.0 in all of these cases,
including empty input). An image without foreground pixels therefore gets FG-ARI 1.0;
it carries no information, so averages of FG-ARI and mBO should skip it: use the
`has_foreground` flag (see `segmentation_metrics`) as the mask of `mean_over_valid`.

Padded images (`valid=False`) score 0.0 so that sums stay correct; average with
`mean_over_valid`.

Ids must lie in [0, num_pred) and [0, num_true). The jnp functions cannot raise inside
jit, so pixels with other ids are silently left out of the table; `ari_numpy` raises.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from slot_jax.evaluation import pixel_counts


# ----------------------------------------------------------------------------- tables


def contingency_table(pred_ids, true_ids, *, num_pred: int, num_true: int):
    """Per-image pixel counts [B, num_pred, num_true] (float32) of pred id i and true id j."""
    batch = pred_ids.shape[0]
    if pred_ids.size != true_ids.size:
        raise ValueError(f"pixel counts differ: {pred_ids.shape} vs {true_ids.shape}")
    pred_onehot = jax.nn.one_hot(pred_ids.reshape(batch, -1), num_pred, dtype=jnp.float32)
    true_onehot = jax.nn.one_hot(true_ids.reshape(batch, -1), num_true, dtype=jnp.float32)
    # 0/1 inputs are exact even in bf16/tf32 matmul passes, and accumulation is float32,
    # so counts are exact (below 2**24 pixels) at any matmul precision.
    return jnp.einsum("bpi,bpj->bij", pred_onehot, true_onehot,
                      preferred_element_type=jnp.float32)


_CHUNK_IMAGES = 64  # images per bincount: small enough to stay in cache, many enough to amortise calls
_POOL = None


def _thread_pool():
    """numpy's bincount and ufuncs release the GIL, so host threads use every core."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="slot_jax_metrics")
    return _POOL


def _check_id_ranges(pred, true, num_pred: int, num_true: int):
    for name, ids, num in (("pred", pred, num_pred), ("true", true, num_true)):
        if ids.size and (ids.min() < 0 or ids.max() >= num):
            raise ValueError(f"{name} ids must lie in [0, {num}), got [{ids.min()}, {ids.max()}]")


def _chunk_table(pred, true, num_pred: int, num_true: int):
    _check_id_ranges(pred, true, num_pred, num_true)
    batch, cells = pred.shape[0], num_pred * num_true
    # The narrowest integer type that holds every (image, pred, true) cell index of the chunk.
    dtype = np.uint16 if batch * cells <= np.iinfo(np.uint16).max else np.int64
    offsets = (np.arange(batch, dtype=dtype) * dtype(cells))[:, None]
    flat = offsets + pred.astype(dtype, copy=False) * dtype(num_true) + true.astype(dtype, copy=False)
    return np.bincount(flat.ravel(), minlength=batch * cells).reshape(batch, num_pred, num_true)


TABLE_KERNELS = ("auto", "numba", "bincount")


def contingency_table_numpy(pred_ids, true_ids, *, num_pred: int, num_true: int, kernel: str = "auto"):
    """Host variant of `contingency_table`: int64 counts [B, P, T]. `kernel="auto"` counts with the
    compiled kernel of `pixel_counts` when numba is installed, else (or with "bincount") with one
    bincount per chunk of images, chunks spread over threads. Raises ValueError for ids outside
    [0, num)."""
    if kernel not in TABLE_KERNELS:
        raise ValueError(f"kernel={kernel!r}: choose one of {', '.join(TABLE_KERNELS)}")
    pred_ids = np.asarray(pred_ids)
    true_ids = np.asarray(true_ids)
    batch = pred_ids.shape[0]
    # Explicit pixel counts: reshape(batch, -1) fails for an empty batch.
    pred_flat = pred_ids.reshape(batch, int(np.prod(pred_ids.shape[1:])))
    true_flat = true_ids.reshape(true_ids.shape[0], int(np.prod(true_ids.shape[1:])))
    if pred_flat.shape != true_flat.shape:
        raise ValueError(f"pixel counts differ: {pred_ids.shape} vs {true_ids.shape}")
    compiled = None
    if kernel != "bincount":
        compiled = pixel_counts.count_tables(pred_flat, true_flat, num_pred, num_true)
    if compiled is None and kernel == "numba":
        raise ValueError("kernel='numba' needs numba and integer ids of at most 32 bits "
                         "(pip install -e '.[fast]'), or use kernel='auto'")
    if compiled is not None:
        tables, bad = compiled
        if bad.any():  # the kernel only flags images; name the offending range from them
            _check_id_ranges(pred_flat[bad], true_flat[bad], num_pred, num_true)
        return tables
    starts = range(0, batch, _CHUNK_IMAGES)
    work = lambda i: _chunk_table(pred_flat[i:i + _CHUNK_IMAGES], true_flat[i:i + _CHUNK_IMAGES], num_pred, num_true)
    parts = list(_thread_pool().map(work, starts)) if len(starts) > 1 else [work(0)]
    if not parts:
        return np.zeros((0, num_pred, num_true), np.int64)
    return np.concatenate(parts).astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- ARI


def _pairs(counts):
    """Ordered pair count x(x-1); the factor 2 against C(x,2) cancels in ARI."""
    return counts * (counts - 1)


def ari_from_table(table, xp=jnp):
    """ARI per image from contingency tables [B, P, T]; `xp` is jnp or numpy."""
    pred_sizes = table.sum(axis=2)
    true_sizes = table.sum(axis=1)
    num_pixels = pred_sizes.sum(axis=1)
    rindex = _pairs(table).sum(axis=(1, 2))
    aindex = _pairs(pred_sizes).sum(axis=1)
    bindex = _pairs(true_sizes).sum(axis=1)
    all_pairs = _pairs(num_pixels)
    expected = aindex * bindex / xp.where(all_pairs > 0, all_pairs, 1)
    max_index = (aindex + bindex) / 2
    denominator = max_index - expected
    # Decided from exact pair counts, not from `denominator == 0`: in float32
    # aindex*bindex/all_pairs need not round back to exactly all_pairs.
    both_singletons = (aindex == 0) & (bindex == 0)  # includes <= 1 pixel
    both_one_cluster = (aindex == all_pairs) & (bindex == all_pairs) & (all_pairs > 0)
    degenerate = both_singletons | both_one_cluster
    safe_denominator = xp.where(degenerate, 1, denominator)
    return xp.where(degenerate, 1.0, (rindex - expected) / safe_denominator)


def _fg_table(table):
    return table[:, :, 1:]


def _zero_invalid(scores, valid, xp=jnp):
    if valid is None:
        return scores
    return xp.where(xp.asarray(valid, dtype=bool), scores, 0.0)


@functools.partial(jax.jit, static_argnames=("num_pred", "num_true", "ignore_background"))
def ari(pred_ids, true_ids, *, num_pred: int, num_true: int,
        ignore_background: bool = False, valid=None):
    """Adjusted Rand index per image, float32 [B].

    pred_ids, true_ids: int [B, ...spatial]. num_pred: number of predicted segments
    (slots); num_true: max true id + 1, background included. With
    `ignore_background=True` (FG-ARI) pixels with true id 0 are not counted. See the
    module docstring for the degenerate-case rule and `valid`.
    """
    table = contingency_table(pred_ids, true_ids, num_pred=num_pred, num_true=num_true)
    if ignore_background:
        table = _fg_table(table)
    scores = ari_from_table(table).astype(jnp.float32)
    return _zero_invalid(scores, valid)


fg_ari = functools.partial(ari, ignore_background=True)


def ari_numpy(pred_ids, true_ids, *, num_pred: int, num_true: int,
              ignore_background: bool = False, valid=None, kernel: str = "auto"):
    """Host variant of `ari` (exact integer table, float64 arithmetic); float32 [B]. `kernel` as
    in `contingency_table_numpy`."""
    table = contingency_table_numpy(pred_ids, true_ids, num_pred=num_pred, num_true=num_true,
                                    kernel=kernel)
    if ignore_background:
        table = _fg_table(table)
    scores = ari_from_table(table.astype(np.float64), xp=np).astype(np.float32)
    return _zero_invalid(scores, valid, xp=np)


fg_ari_numpy = functools.partial(ari_numpy, ignore_background=True)


def has_foreground(true_ids, valid=None):
    """[B] bool: the image is real (valid) and has at least one non-background pixel."""
    batch = true_ids.shape[0]
    flag = jnp.any(true_ids.reshape(batch, -1) != 0, axis=1)
    if valid is not None:
        flag = flag & jnp.asarray(valid, dtype=bool)
    return flag


def mean_over_valid(scores, valid=None):
    """Mean of `scores` over images where `valid` is True; 0.0 when there are none."""
    scores = jnp.asarray(scores, dtype=jnp.float32)
    if valid is None:
        return scores.mean()
    weights = jnp.asarray(valid, dtype=jnp.float32)
    total = jnp.sum(jnp.where(weights > 0, scores, 0.0))
    return total / jnp.maximum(weights.sum(), 1.0)


# ----------------------------------------------------------------------------- mBO


def _as_pred_ids(pred_masks_or_ids):
    """Float masks [B, K, ...spatial] become ids by argmax over K; int ids pass through.

    Told apart by dtype, not rank: true ids may carry a trailing channel of 1.
    """
    pred = jnp.asarray(pred_masks_or_ids)
    if jnp.issubdtype(pred.dtype, jnp.floating):
        return jnp.argmax(pred, axis=1)
    return pred


def best_overlaps_from_table(table):
    """Best IoU over predicted segments for each true object: ([B, T-1], present [B, T-1]).

    Predicted segments are counted over all pixels, background included; true id 0
    (background) is not an object.
    """
    pred_sizes = table.sum(axis=2, keepdims=True)
    true_sizes = table.sum(axis=1, keepdims=True)
    union = pred_sizes + true_sizes - table
    iou = table / jnp.maximum(union, 1.0)
    best = iou.max(axis=1)[:, 1:]
    present = true_sizes[:, 0, 1:] > 0
    return jnp.where(present, best, 0.0), present


@functools.partial(jax.jit, static_argnames=("num_pred", "num_true"))
def mbo_totals(pred_masks_or_ids, true_ids, *, num_pred: int, num_true: int, valid=None):
    """Per image (sum of best IoUs over its objects, number of objects), both float32 [B].

    pred_masks_or_ids: int ids [B, ...spatial] or float masks [B, K, ...spatial] (argmax).

    For the mBO averaged over all objects of a dataset, divide the summed first output
    by the summed second. Padded images contribute (0, 0).
    """
    pred_ids = _as_pred_ids(pred_masks_or_ids)
    table = contingency_table(pred_ids, true_ids, num_pred=num_pred, num_true=num_true)
    return _mbo_totals_from_table(table, valid)


def _mbo_totals_from_table(table, valid):
    best, present = best_overlaps_from_table(table)
    iou_sum = best.sum(axis=1)
    count = present.sum(axis=1).astype(jnp.float32)
    return _zero_invalid(iou_sum, valid), _zero_invalid(count, valid)


@functools.partial(jax.jit, static_argnames=("num_pred", "num_true"))
def mbo_per_image(pred_masks_or_ids, true_ids, *, num_pred: int, num_true: int, valid=None):
    """mBO averaged over the objects of each image, float32 [B].

    Images without objects (and padded ones) get 0.0 and must be skipped when averaging
    over images: mask with `has_foreground(true_ids, valid)`.
    """
    iou_sum, count = mbo_totals(pred_masks_or_ids, true_ids, num_pred=num_pred,
                                num_true=num_true, valid=valid)
    return iou_sum / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------- together


@functools.partial(jax.jit, static_argnames=("num_pred", "num_true"))
def segmentation_metrics(pred_ids, true_ids, valid, num_pred: int, num_true: int):
    """Per-image metrics from one contingency table; every value is [B].

    ari: average with `valid`. fg_ari, mbo (over the image's objects): average with
    `has_foreground`, which already excludes padded images. mbo_iou_sum / num_objects:
    sum both over the dataset for the mBO averaged over objects instead of images. table: the
    contingency table [B, P, T], from which `miou_totals_from_tables` computes mIoU.
    """
    pred_ids = _as_pred_ids(pred_ids)
    table = contingency_table(pred_ids, true_ids, num_pred=num_pred, num_true=num_true)
    iou_sum, num_objects = _mbo_totals_from_table(table, valid)
    return {
        "ari": _zero_invalid(ari_from_table(table), valid),
        "fg_ari": _zero_invalid(ari_from_table(_fg_table(table)), valid),
        "mbo": iou_sum / jnp.maximum(num_objects, 1.0),
        "mbo_iou_sum": iou_sum,
        "num_objects": num_objects,
        "has_foreground": has_foreground(true_ids, valid),
        "table": table,  # [B, P, T] pixel counts, for host-side metrics such as mIoU
    }


# ----------------------------------------------------------------------------- mIoU


def miou_totals_from_tables(tables, valid=None):
    """Hungarian-matched IoU per image from contingency tables [B, P, T] (host, scipy).

    Each true object (ids >= 1 present in the image) is matched to a distinct predicted segment
    so that the summed IoU is maximal; an object left without a segment (more objects than
    segments) scores 0. Returns (summed matched IoU [B], number of objects [B]), both float64;
    padded images give (0, 0). Divide per image for mIoU per image, or sum both over a dataset.
    """
    from scipy.optimize import linear_sum_assignment

    tables = np.asarray(tables, np.float64)
    pred_sizes = tables.sum(axis=2, keepdims=True)
    true_sizes = tables.sum(axis=1, keepdims=True)
    iou = tables / np.maximum(pred_sizes + true_sizes - tables, 1.0)
    keep = np.ones(len(tables), bool) if valid is None else np.asarray(valid, bool)
    iou_sum, count = np.zeros(len(tables)), np.zeros(len(tables))
    for b in np.flatnonzero(keep):
        present = np.flatnonzero(true_sizes[b, 0, 1:] > 0) + 1
        if present.size:
            rows, cols = linear_sum_assignment(iou[b][:, present], maximize=True)
            iou_sum[b] = iou[b][rows, present[cols]].sum()
            count[b] = present.size
    return iou_sum, count


def miou(pred_masks_or_ids, true_ids, *, num_pred: int, num_true: int, valid=None) -> np.ndarray:
    """mIoU per image [B] (float32) with Hungarian matching; see `miou_totals_from_tables`.

    Images without objects (and padded ones) get 0.0: average with `has_foreground`.
    """
    pred_ids = np.asarray(_as_pred_ids(pred_masks_or_ids))
    table = contingency_table_numpy(pred_ids, true_ids, num_pred=num_pred, num_true=num_true)
    iou_sum, count = miou_totals_from_tables(table, valid)
    return (iou_sum / np.maximum(count, 1.0)).astype(np.float32)
