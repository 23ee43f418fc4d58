"""The compiled table kernel against the bincount path it replaces, and its fallbacks."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from slot_jax.evaluation import pixel_counts
from slot_jax.evaluation import segmentation as seg

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
needs_numba = pytest.mark.skipif(not pixel_counts.available(),
                                 reason="numba not installed (pip install -e '.[fast]')")


def bincount_tables(pred, true, num_pred, num_true):
    return seg.contingency_table_numpy(pred, true, num_pred=num_pred, num_true=num_true,
                                       kernel="bincount")


def blocky(rng, batch, size, num):
    """Spatially coherent segments, like real masks: long runs of one table cell."""
    coarse = rng.integers(0, num, (batch, size // 8, size // 8))
    return np.repeat(np.repeat(coarse, 8, 1), 8, 2)


@needs_numba
@pytest.mark.parametrize("pred_dtype,true_dtype", [
    (np.int32, np.int32), (np.int64, np.uint8), (np.uint8, np.uint8), (np.int8, np.uint16),
    (np.uint32, np.int16)])
def test_kernel_equals_bincount(pred_dtype, true_dtype):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 7, (9, 12, 13)).astype(pred_dtype)
    true = rng.integers(0, 5, (9, 12, 13)).astype(true_dtype)
    tables, bad = pixel_counts.count_tables(pred.reshape(9, -1), true.reshape(9, -1), 7, 5)
    assert tables.dtype == np.int64 and not bad.any()
    np.testing.assert_array_equal(tables, bincount_tables(pred, true, 7, 5))
    for kernel in ("auto", "numba"):
        np.testing.assert_array_equal(
            tables, seg.contingency_table_numpy(pred, true, num_pred=7, num_true=5, kernel=kernel))


@needs_numba
def test_kernel_on_coherent_segments_and_sklearn():
    from sklearn.metrics import adjusted_rand_score
    rng = np.random.default_rng(1)
    pred, true = blocky(rng, 20, 64, 11), blocky(rng, 20, 64, 6)
    np.testing.assert_array_equal(seg.contingency_table_numpy(pred, true, num_pred=11, num_true=6),
                                  bincount_tables(pred, true, 11, 6))
    want = [adjusted_rand_score(t.ravel(), p.ravel()) for p, t in zip(pred, true)]
    np.testing.assert_allclose(seg.ari_numpy(pred, true, num_pred=11, num_true=6), want, atol=1e-6)


@needs_numba
def test_kernel_on_empty_inputs_and_non_contiguous_views():
    empty = seg.contingency_table_numpy(np.zeros((0, 4), np.int32), np.zeros((0, 4), np.int32),
                                        num_pred=3, num_true=2)
    assert empty.shape == (0, 3, 2)
    no_pixels = seg.contingency_table_numpy(np.zeros((2, 0), np.int32), np.zeros((2, 0), np.int32),
                                            num_pred=3, num_true=2)
    np.testing.assert_array_equal(no_pixels, np.zeros((2, 3, 2)))
    rng = np.random.default_rng(2)
    pred, true = rng.integers(0, 4, (6, 10, 10)), rng.integers(0, 3, (6, 10, 10))
    view_p, view_t = pred[::2, :, ::3], true[::2, :, ::3]
    np.testing.assert_array_equal(seg.contingency_table_numpy(view_p, view_t, num_pred=4, num_true=3),
                                  bincount_tables(view_p.copy(), view_t.copy(), 4, 3))


@needs_numba
@pytest.mark.parametrize("pred,true,match", [
    ([[0, 4]], [[0, 1]], r"pred ids must lie in \[0, 4\), got \[0, 4\]"),
    ([[0, -1]], [[0, 1]], r"pred ids must lie in \[0, 4\), got \[-1, 0\]"),
    ([[0, 1]], [[0, 2]], r"true ids must lie in \[0, 2\)"),
    ([[0, 1]], [[-3, 1]], r"true ids must lie in \[0, 2\)")])
def test_kernel_path_rejects_ids_out_of_range(pred, true, match):
    # Two images, only the second bad: the error still names the range.
    pred = np.array([[0, 0], *pred], np.int32)
    true = np.array([[0, 0], *true], np.int32)
    with pytest.raises(ValueError, match=match):
        seg.contingency_table_numpy(pred, true, num_pred=4, num_true=2)


@needs_numba
def test_uint64_and_float_ids_go_to_bincount():
    ids = np.zeros((1, 4), np.uint64)
    assert pixel_counts.count_tables(ids, ids, 2, 2) is None
    np.testing.assert_array_equal(seg.contingency_table_numpy(ids, ids, num_pred=2, num_true=2)[0],
                                  [[4, 0], [0, 0]])
    assert pixel_counts.count_tables(ids.astype(np.float32), ids.astype(np.float32), 2, 2) is None
    with pytest.raises(ValueError, match="kernel='numba' needs numba and integer ids"):
        seg.contingency_table_numpy(ids, ids, num_pred=2, num_true=2, kernel="numba")


def test_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="kernel='fast': choose one of auto, numba, bincount"):
        seg.ari_numpy(np.zeros((1, 2), np.int32), np.zeros((1, 2), np.int32), num_pred=1,
                      num_true=1, kernel="fast")


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


@pytest.mark.parametrize("how", ["opt-out", "numba missing"])
def test_falls_back_to_bincount(how):
    code = """
import sys
if BLOCK: sys.modules['numba'] = None  # any `import numba` now fails
import numpy as np
from slot_jax.evaluation import pixel_counts, segmentation as seg
assert not pixel_counts.available()
pred = np.array([[0, 1, 1, 2]]); true = np.array([[0, 0, 1, 1]])
print(seg.contingency_table_numpy(pred, true, num_pred=3, num_true=2).tolist())
try:
    seg.contingency_table_numpy(pred, true, num_pred=3, num_true=2, kernel="numba")
except ValueError as error:
    print(error)
""".replace("BLOCK", str(how == "numba missing"))
    env = {pixel_counts.OPT_OUT: "0"} if how == "opt-out" else {}
    result = _run(code, **env)
    assert result.returncode == 0, result.stderr
    table, error = result.stdout.strip().splitlines()
    assert table == "[[[1, 0], [1, 1], [0, 1]]]"
    assert error.startswith("kernel='numba' needs numba")
