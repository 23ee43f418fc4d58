"""Resizers, statistics, FID and KID against clean-fid, torch and a scipy formula."""
import numpy as np
import pytest
from scipy import linalg

from slot_jax.evaluation import fid

D, N = 64, 200

# clean-fid calls sqrtm(..., disp=False), deprecated in SciPy 1.17.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")


def _cleanfid(module):
    pytest.importorskip("torch", reason="torch not installed: clean-fid needs it")
    return pytest.importorskip(
        f"cleanfid.{module}", reason="clean-fid not installed: it is the reference")


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(D, D)) / np.sqrt(D)
    f1 = rng.normal(size=(N, D)) @ mixing
    f2 = rng.normal(0.3, 1.2, size=(N + 37, D)) @ mixing + 0.1
    return f1, f2


def _uint8_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("hw", [(32, 48), (320, 310)])
def test_clean_resize_matches_clean_fid(hw):
    resize = _cleanfid("resize")
    reference = resize.make_resizer("PIL", False, "bicubic", (299, 299))
    images = _uint8_images((2, *hw, 3))
    ours = fid.clean_resize(images)
    assert ours.dtype == np.float32 and ours.shape == (2, 299, 299, 3)
    for image, got in zip(images, ours):
        np.testing.assert_allclose(got, reference(image), rtol=0, atol=1e-3)
    assert ours.min() >= 0 and ours.max() <= 255
    assert not np.array_equal(ours, np.round(ours))  # not quantised


def test_clean_resize_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        fid.clean_resize(np.zeros((1, 8, 8, 3), np.float32))


@pytest.mark.parametrize("hw", [(32, 48), (320, 310)])
def test_legacy_resize_matches_torch_bilinear(hw):
    torch = pytest.importorskip(
        "torch", reason="torch not installed: its interpolate is the reference")
    images = _uint8_images((2, *hw, 3)).astype(np.float32) / 255
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299), mode="bilinear",
            align_corners=False).numpy().transpose(0, 2, 3, 1)
    ours = np.asarray(fid.legacy_resize(images))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- statistics


def test_feature_statistics_is_float64_with_n_minus_1(features):
    f1, _ = features
    mu, sigma = fid.feature_statistics(f1.astype(np.float32))
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (D, D)
    centred = f1 - f1.mean(axis=0)
    np.testing.assert_allclose(sigma, centred.T @ centred / (N - 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mu, f1.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [0, 1])
def test_feature_statistics_needs_two_samples(n):
    with pytest.raises(ValueError, match="at least 2 samples"):
        fid.feature_statistics(np.ones((n, D)))


# ----------------------------------------------------------------------------- FID


def _scipy_fid(mu1, s1, mu2, s2):
    """The textbook formula, written independently: sqrtm(s1^1/2 s2 s1^1/2) is symmetric."""
    root1 = linalg.sqrtm(s1).real
    cross = linalg.sqrtm(root1 @ s2 @ root1).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross)


@pytest.mark.parametrize("num_images", [N, 20], ids=["full_rank", "fewer_images_than_features"])
def test_frechet_distance_matches_clean_fid_and_scipy(features, num_images):
    reference = _cleanfid("fid")
    stats1 = fid.feature_statistics(features[0][:num_images])
    stats2 = fid.feature_statistics(features[1][:num_images + 3])
    ours = fid.frechet_distance(*stats1, *stats2)
    assert isinstance(ours, float) and ours > 1
    # clean-fid's sqrtm of a singular product is itself inexact (and may retry with 1e-6 added).
    rtol = 1e-9 if num_images > D else 1e-6
    np.testing.assert_allclose(ours, reference.frechet_distance(*stats1, *stats2), rtol=rtol)
    np.testing.assert_allclose(ours, _scipy_fid(*stats1, *stats2), rtol=rtol)
    # Singular covariances round to about 1e-7 of their trace here, as in clean-fid.
    assert abs(fid.frechet_distance(*stats1, *stats1)) < 1e-6 * np.trace(stats1[1])


def test_frechet_distance_is_exact_where_the_answer_is_known(features):
    """Equal covariances leave |mu1 - mu2|^2, also when they are singular (10 images, 64
    features: to 1e-7 of the trace, as clean-fid rounds); diagonal ones, some of whose variances
    are zero, give sum (sqrt(a) - sqrt(b))^2."""
    mu1, sigma = fid.feature_statistics(features[0][:10])
    mu2 = mu1 + np.linspace(-1, 1, D)
    assert np.linalg.matrix_rank(sigma) == 9
    np.testing.assert_allclose(fid.frechet_distance(mu1, sigma, mu2, sigma), np.sum((mu1 - mu2) ** 2),
                               rtol=0, atol=1e-6 * np.trace(sigma))
    a = np.random.default_rng(1).uniform(0, 3, D) * (np.arange(D) % 3 > 0)  # a third of them zero
    b = np.random.default_rng(2).uniform(0, 3, D)
    want = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(fid.frechet_distance(np.zeros(D), np.diag(a), np.zeros(D), np.diag(b)), want,
                               rtol=1e-12)


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s + np.triu(np.ones_like(s), 1), "not a symmetric covariance"),
    (lambda s: s - 2 * np.abs(s).max() * np.eye(len(s)), "not positive semi-definite"),
    (lambda s: np.where(np.eye(len(s)) > 0, np.nan, s), "non-finite sigma"),
])
@pytest.mark.parametrize("which", [0, 1])
def test_frechet_distance_refuses_invalid_covariances(features, corrupt, message, which):
    stats = [list(fid.feature_statistics(f)) for f in features]
    stats[which][1] = corrupt(stats[which][1])
    with pytest.raises(ValueError, match=message):
        fid.frechet_distance(*stats[0], *stats[1])


def test_frechet_distance_rejects_mismatched_statistics(features):
    stats1 = fid.feature_statistics(features[0])
    stats2 = fid.feature_statistics(features[1][:, :10])
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(*stats1, *stats2)


# ----------------------------------------------------------------------------- KID


@pytest.mark.parametrize("max_kernel_entries", [fid.MAX_KERNEL_ENTRIES, 0], ids=["kernels_once", "per_subset"])
@pytest.mark.parametrize("max_subset_size", [1000, 50])
def test_kid_matches_clean_fid(features, max_subset_size, max_kernel_entries):
    reference = _cleanfid("fid")
    f1, f2 = features
    np.random.seed(3)
    want = reference.kernel_distance(f1, f2, num_subsets=20, max_subset_size=max_subset_size)
    got = fid.kernel_inception_distance(f1, f2, num_subsets=20, max_subset_size=max_subset_size, seed=3,
                                        max_kernel_entries=max_kernel_entries)
    assert want > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_kid_from_the_kernels_of_all_pairs_equals_kid_per_subset(features):
    f1, f2 = features[0], features[1][:150]  # sets of different sizes, subsets of 60
    once = fid.kernel_inception_distance(f1, f2, num_subsets=30, max_subset_size=60, seed=5)
    per_subset = fid.kernel_inception_distance(f1, f2, num_subsets=30, max_subset_size=60, seed=5,
                                               max_kernel_entries=0)
    np.testing.assert_allclose(once, per_subset, rtol=1e-10)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel(features):
    """With m = N every subset is a permutation of the whole set, so KID is one MMD^2_u."""
    f1, f2 = features[0][:50], features[1][:50]
    kernel = lambda a, b: (a @ b / D + 1) ** 3  # noqa: E731
    m = len(f1)
    kxx = sum(kernel(f1[i], f1[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(kernel(f2[i], f2[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(kernel(f1[i], f2[j]) for i in range(m) for j in range(m))
    mmd = (kxx + kyy) / (m * (m - 1)) - 2 * kxy / m**2
    np.testing.assert_allclose(fid.kernel_inception_distance(f1, f2, num_subsets=3), mmd,
                               rtol=1e-9)
    same = fid.kernel_inception_distance(features[0][:100], features[0][100:], num_subsets=10)
    assert abs(same) < 0.2 * mmd
    with pytest.raises(ValueError, match="at least 2"):
        fid.kernel_inception_distance(f1[:1], f1)
