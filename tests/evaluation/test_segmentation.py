"""ARI / FG-ARI / mBO against sklearn, the pair-counting definition and brute force."""
import functools
import itertools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from slot_jax.evaluation import segmentation as seg

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

ARI_VARIANTS = {
    "jnp": lambda *a, **k: np.asarray(seg.ari(*a, **k)),
    "numpy": seg.ari_numpy,  # compiled kernel when numba is installed
    "numpy-bincount": functools.partial(seg.ari_numpy, kernel="bincount"),
}


def sklearn_ari(pred_ids, true_ids, ignore_background=False):
    scores = []
    for pred, true in zip(pred_ids, true_ids):
        pred, true = pred.ravel(), true.ravel()
        if ignore_background:
            pred, true = pred[true != 0], true[true != 0]
        scores.append(adjusted_rand_score(true, pred))
    return np.array(scores)


def random_batch(rng, batch, spatial, num_pred, num_true, background_prob=0.3):
    """Each image draws its own number of clusters; some images mostly background."""
    pred = np.empty((batch, *spatial), np.int32)
    true = np.empty((batch, *spatial), np.int32)
    for b in range(batch):
        k_pred = rng.integers(1, num_pred + 1)
        k_true = rng.integers(1, num_true + 1)
        pred[b] = rng.integers(0, k_pred, spatial)
        objects = rng.integers(1, max(k_true, 2), spatial)
        background = rng.random(spatial) < rng.choice([0.0, background_prob, 0.9])
        true[b] = np.where(background, 0, objects) if k_true > 1 else 0
        if b % 3 == 0:  # correlated prediction, so scores are not all near 0
            noise = rng.random(spatial) < 0.2
            pred[b] = np.where(noise, pred[b], true[b] % num_pred)
    return pred, true


@pytest.mark.parametrize("variant", ARI_VARIANTS)
@pytest.mark.parametrize("spatial", [(8, 8), (5, 7), (3, 4, 5), (64, 64)])
@pytest.mark.parametrize("ignore_background", [False, True])
def test_ari_matches_sklearn_on_random_cases(variant, spatial, ignore_background):
    rng = np.random.default_rng([*spatial, ignore_background])
    pred, true = random_batch(rng, 12, spatial, num_pred=7, num_true=6)
    got = ARI_VARIANTS[variant](pred, true, num_pred=7, num_true=6,
                                ignore_background=ignore_background)
    want = sklearn_ari(pred, true, ignore_background)
    assert got.shape == (12,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)


def pair_counting_ari(pred, true):
    """ARI straight from its definition over unordered pixel pairs."""
    pairs = list(itertools.combinations(range(len(pred)), 2))
    same_pred = np.array([pred[i] == pred[j] for i, j in pairs])
    same_true = np.array([true[i] == true[j] for i, j in pairs])
    index = np.sum(same_pred & same_true)
    expected = same_pred.sum() * same_true.sum() / len(pairs)
    maximum = (same_pred.sum() + same_true.sum()) / 2
    return (index - expected) / (maximum - expected)


@pytest.mark.parametrize("variant", ARI_VARIANTS)
def test_ari_matches_pair_counting_definition(variant):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (6, 9)).astype(np.int32)
    true = rng.integers(0, 4, (6, 9)).astype(np.int32)
    want = [pair_counting_ari(p, t) for p, t in zip(pred, true)]
    got = ARI_VARIANTS[variant](pred, true, num_pred=3, num_true=4)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("variant", ARI_VARIANTS)
def test_perfect_segmentation_with_permuted_labels_scores_one(variant):
    rng = np.random.default_rng(1)
    true = rng.integers(0, 5, (4, 10, 10)).astype(np.int32)
    pred = rng.permutation(7)[true].astype(np.int32)
    for ignore_background in (False, True):
        got = ARI_VARIANTS[variant](pred, true, num_pred=7, num_true=5,
                                    ignore_background=ignore_background)
        np.testing.assert_allclose(got, 1.0, atol=1e-6)


@pytest.mark.parametrize("variant", ARI_VARIANTS)
def test_all_one_cluster_prediction(variant):
    true = np.zeros((2, 6, 6), np.int32)
    true[:, :3] = 1
    true[:, 3:, :2] = 2
    true[1, 3:] = 0  # image 1: background and a single object
    pred = np.full_like(true, 4)
    ari_scores = ARI_VARIANTS[variant](pred, true, num_pred=5, num_true=3)
    fg_scores = ARI_VARIANTS[variant](pred, true, num_pred=5, num_true=3,
                                      ignore_background=True)
    np.testing.assert_allclose(ari_scores, [0.0, 0.0], atol=1e-6)
    # Image 0 has two objects merged into one slot: 0. Image 1 has one object that
    # one slot covers: one cluster on both sides, the degenerate 1.0.
    np.testing.assert_allclose(fg_scores, [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(fg_scores, sklearn_ari(pred, true, True), atol=1e-6)


@pytest.mark.parametrize("variant", ARI_VARIANTS)
def test_degenerate_cases_score_one_like_sklearn(variant):
    # one cluster on both sides
    one = ARI_VARIANTS[variant](np.full((1, 4, 4), 2), np.full((1, 4, 4), 1),
                                num_pred=3, num_true=2)
    # a single pixel
    pixel = ARI_VARIANTS[variant](np.array([[[1]]]), np.array([[[0]]]), num_pred=2, num_true=2)
    # every pixel its own cluster on both sides
    singletons = ARI_VARIANTS[variant](np.array([[0, 1, 2, 3]]), np.array([[3, 0, 2, 1]]),
                                       num_pred=4, num_true=4)
    # no foreground at all: FG-ARI counts no pixel
    empty = ARI_VARIANTS[variant](np.array([[0, 1, 1, 0]]), np.zeros((1, 4), np.int64),
                                  num_pred=2, num_true=2, ignore_background=True)
    for got in (one, pixel, singletons, empty):
        np.testing.assert_array_equal(got, [1.0])
    assert adjusted_rand_score([], []) == 1.0  # the rule for empty input is sklearn's


def test_no_foreground_images_are_flagged_and_left_out_of_averages():
    true = np.zeros((3, 4, 4), np.int32)
    true[0, :2] = 1
    true[0, 2:, :2] = 2
    pred = np.zeros_like(true)  # image 0: FG-ARI 0; images 1, 2: no foreground
    valid = np.array([True, True, False])
    metrics = seg.segmentation_metrics(pred, true, valid, num_pred=2, num_true=3)
    np.testing.assert_array_equal(metrics["has_foreground"], [True, False, False])
    np.testing.assert_array_equal(metrics["fg_ari"], [0.0, 1.0, 0.0])
    assert float(seg.mean_over_valid(metrics["fg_ari"], metrics["has_foreground"])) == 0.0
    assert float(seg.mean_over_valid(metrics["fg_ari"], valid)) == 0.5


@pytest.mark.parametrize("variant", ARI_VARIANTS)
def test_padded_images_score_zero_and_are_not_averaged(variant):
    rng = np.random.default_rng(2)
    pred, true = random_batch(rng, 6, (8, 8), num_pred=4, num_true=4)
    valid = np.array([True, False, True, True, False, True])
    got = ARI_VARIANTS[variant](pred, true, num_pred=4, num_true=4, valid=valid)
    want = sklearn_ari(pred, true)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-5)
    np.testing.assert_array_equal(got[~valid], 0.0)
    mean = float(seg.mean_over_valid(got, valid))
    np.testing.assert_allclose(mean, want[valid].mean(), atol=1e-5)


def test_ari_under_jit_and_aliases():
    rng = np.random.default_rng(3)
    pred, true = random_batch(rng, 5, (6, 6), num_pred=5, num_true=4)
    valid = np.array([True, True, False, True, True])
    jitted = jax.jit(functools.partial(seg.ari, num_pred=5, num_true=4))
    jitted_fg = jax.jit(functools.partial(seg.fg_ari, num_pred=5, num_true=4))
    np.testing.assert_allclose(jitted(pred, true, valid=valid)[valid],
                               sklearn_ari(pred, true)[valid], atol=1e-5)
    np.testing.assert_allclose(jitted_fg(pred, true), sklearn_ari(pred, true, True), atol=1e-5)
    np.testing.assert_allclose(seg.fg_ari_numpy(pred, true, num_pred=5, num_true=4),
                               sklearn_ari(pred, true, True), atol=1e-6)


def test_numpy_variant_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match="pred ids"):
        seg.ari_numpy(np.array([[0, 5]]), np.array([[0, 1]]), num_pred=5, num_true=2)


def brute_force_mbo(pred, true, num_pred):
    """Per image: list of best IoUs, one per present true object (id > 0)."""
    per_image = []
    for p, t in zip(pred, true):
        best = []
        for obj in np.unique(t):
            if obj == 0:
                continue
            ious = [np.sum((p == i) & (t == obj)) / np.sum((p == i) | (t == obj))
                    for i in range(num_pred)]
            best.append(max(ious))
        per_image.append(best)
    return per_image


def test_mbo_matches_brute_force():
    rng = np.random.default_rng(4)
    pred, true = random_batch(rng, 10, (9, 11), num_pred=6, num_true=5)
    true[4] = 0  # one image without objects
    valid = np.ones(10, bool)
    valid[7] = False
    expected = brute_force_mbo(pred, true, num_pred=6)

    per_image = np.asarray(seg.mbo_per_image(pred, true, num_pred=6, num_true=5, valid=valid))
    iou_sum, count = seg.mbo_totals(pred, true, num_pred=6, num_true=5, valid=valid)
    for b, best in enumerate(expected):
        if not valid[b] or not best:
            assert per_image[b] == 0.0 and count[b] == 0
            continue
        np.testing.assert_allclose(per_image[b], np.mean(best), atol=1e-6)
        np.testing.assert_allclose(iou_sum[b], np.sum(best), atol=1e-5)
        assert count[b] == len(best)
    over_objects = float(np.sum(iou_sum) / np.sum(count))
    want = np.concatenate([best for b, best in enumerate(expected) if valid[b]])
    np.testing.assert_allclose(over_objects, want.mean(), atol=1e-6)


def test_mbo_accepts_masks_as_well_as_ids():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4, 7, 7)).astype(np.float32)
    true = rng.integers(0, 3, (3, 7, 7)).astype(np.int32)
    from_ids = seg.mbo_per_image(logits.argmax(1), true, num_pred=4, num_true=3)
    from_masks = seg.mbo_per_image(logits, true, num_pred=4, num_true=3)
    from_masks_channel = seg.mbo_per_image(logits[..., None], true, num_pred=4, num_true=3)
    true_with_channel = seg.mbo_per_image(logits, true[..., None], num_pred=4, num_true=3)
    for other in (from_masks, from_masks_channel, true_with_channel):
        np.testing.assert_array_equal(from_ids, other)


def test_segmentation_metrics_agree_with_single_metrics():
    rng = np.random.default_rng(6)
    pred, true = random_batch(rng, 8, (10, 10), num_pred=5, num_true=4)
    valid = np.array([True] * 6 + [False] * 2)
    metrics = seg.segmentation_metrics(pred, true, valid, num_pred=5, num_true=4)
    assert set(metrics) >= {"ari", "fg_ari", "mbo", "has_foreground"}
    kwargs = dict(num_pred=5, num_true=4, valid=valid)
    np.testing.assert_allclose(metrics["ari"], seg.ari(pred, true, **kwargs), atol=1e-7)
    np.testing.assert_allclose(metrics["fg_ari"], seg.fg_ari(pred, true, **kwargs), atol=1e-7)
    np.testing.assert_allclose(metrics["mbo"], seg.mbo_per_image(pred, true, **kwargs),
                               atol=1e-7)
    for name, value in metrics.items():
        assert value.shape == ((8, 5, 4) if name == "table" else (8,))


def test_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import slot_jax.evaluation.segmentation, slot_jax.evaluation.figures\n"
            "assert sys.modules['torch'] is None\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_mismatched_pixel_counts_are_rejected():
    with pytest.raises(ValueError, match="pixel counts"):
        seg.ari(np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 5), np.int32),
                num_pred=2, num_true=2)


# ----------------------------------------------------------------------------- mIoU


def brute_force_miou(pred, true):
    """Best mean IoU over every injective assignment of objects to segments, from masks."""
    objects = [t for t in np.unique(true) if t != 0]
    segments = list(np.unique(pred)) + [-1] * len(objects)  # -1: no segment, IoU 0
    def iou(p, t):
        a, b = pred == p, true == t
        return (a & b).sum() / max((a | b).sum(), 1)
    best = max(sum(iou(p, t) for p, t in zip(assignment, objects))
               for assignment in itertools.permutations(segments, len(objects)))
    return best / len(objects)


@pytest.mark.parametrize("seed", range(6))
def test_miou_equals_brute_force_over_assignments(seed):
    rng = np.random.default_rng(seed)
    num_pred, num_true = (3, 5) if seed % 2 else (5, 4)  # fewer and more segments than objects
    true = rng.integers(0, num_true, (4, 6, 7))
    pred = np.where(rng.random(true.shape) < 0.6, true % num_pred, rng.integers(0, num_pred, true.shape))
    scores = seg.miou(pred, true, num_pred=num_pred, num_true=num_true)
    np.testing.assert_allclose(scores, [brute_force_miou(p, t) for p, t in zip(pred, true)], rtol=1e-6)


def test_miou_is_one_for_a_relabelled_perfect_segmentation_and_skips_padding():
    true = np.array([[[0, 1], [2, 2]], [[0, 0], [0, 0]]])
    pred = np.array([[[3, 0], [1, 1]], [[1, 1], [1, 1]]])
    np.testing.assert_allclose(seg.miou(pred, true, num_pred=4, num_true=3), [1.0, 0.0])
    iou_sum, count = seg.miou_totals_from_tables(
        seg.contingency_table_numpy(pred, true, num_pred=4, num_true=3), valid=[False, True])
    np.testing.assert_array_equal(count, [0, 0])  # padded image, then an image without objects


def test_segmentation_metrics_table_gives_the_same_miou():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, (3, 8, 8)).astype(np.int32)
    pred = rng.integers(0, 5, (3, 8, 8)).astype(np.int32)
    table = seg.segmentation_metrics(pred, true, np.ones(3, bool), num_pred=5, num_true=4)["table"]
    iou_sum, count = seg.miou_totals_from_tables(table)
    np.testing.assert_allclose(iou_sum / count, seg.miou(pred, true, num_pred=5, num_true=4), rtol=1e-6)
