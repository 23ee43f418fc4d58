"""Optional compiled kernel for per-image contingency tables (numba, `pip install slot_jax[fast]`).

numpy's bincount needs the (image, pred, true) cell index of every pixel as a fresh intp array,
so counting 16M int32 pixels reads 128 MB and writes and re-reads 128 MB more in several passes.
This kernel reads each pixel once and counts into a per-image table that stays in L1, over all
cores. `segmentation.contingency_table_numpy` uses it when numba imports and falls back to
bincount otherwise (or when SLOT_JAX_NUMBA=0), with identical results.
"""
from __future__ import annotations

import functools
import os

import numpy as np

OPT_OUT = "SLOT_JAX_NUMBA"
# uint64 is left to bincount: numba compares it with int64 through float64.
_ID_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32))


@functools.lru_cache(maxsize=1)
def _kernel():
    """The jitted counting function, or None when numba is missing or switched off."""
    if os.environ.get(OPT_OUT, "1") == "0":
        return None
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, nogil=True, cache=True)
    def count(pred, true, num_pred, num_true):
        batch, pixels = pred.shape
        tables = np.zeros((batch, num_pred, num_true), np.int64)
        bad = np.zeros(batch, np.bool_)
        for b in numba.prange(batch):
            # int32 counters: an image has fewer than 2**31 pixels, and the table stays small.
            local = np.zeros(num_pred * num_true, np.int32)
            for p in range(pixels):
                i = pred[b, p]
                j = true[b, p]
                if i < 0 or i >= num_pred or j < 0 or j >= num_true:
                    bad[b] = True
                else:
                    local[i * num_true + j] += 1
            for c in range(num_pred * num_true):
                tables[b, c // num_true, c % num_true] = local[c]
        return tables, bad

    return count


def available() -> bool:
    return _kernel() is not None


def count_tables(pred_flat, true_flat, num_pred: int, num_true: int):
    """int64 tables [B, num_pred, num_true] and a [B] flag of images with ids out of range, from
    integer ids [B, pixels]; None when the kernel is unavailable or a dtype is not in _ID_DTYPES."""
    kernel = _kernel()
    if kernel is None or not all(a.dtype in _ID_DTYPES for a in (pred_flat, true_flat)):
        return None
    pred_flat = np.ascontiguousarray(pred_flat)
    true_flat = np.ascontiguousarray(true_flat)
    return kernel(pred_flat, true_flat, np.int64(num_pred), np.int64(num_true))
