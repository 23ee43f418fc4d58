"""FID and KID without PyTorch: resizing, feature statistics, Frechet and kernel distances.

Definitions follow clean-fid (REFERENCE section 3):
- `clean_resize`: clean-fid's "clean" mode, each channel as a float32 PIL image (mode 'F')
  resized to 299x299 with bicubic, clipped to [0, 255], not quantised.
- `legacy_resize`: pytorch-fid's bilinear resize (align_corners=False, no antialiasing).
- `frechet_distance`: clean-fid's `frechet_distance` in float64, its trace of sqrtm(s1 s2)
  taken from symmetric eigenvalues (same value, 6-9x faster).
- `kernel_inception_distance`: clean-fid's `kernel_distance` (unbiased MMD^2 with the cubic
  polynomial kernel, averaged over random subsets), computed in float64.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from slot_jax.evaluation.inception import INPUT_SIZE


# ----------------------------------------------------------------------------- resizing


def _check_images(images, what):
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what}: expected images [N, H, W, 3], got shape {images.shape}")


def clean_resize(images_uint8, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3] -> float32 [N, size, size, 3] in [0, 255] (clean-fid)."""
    images = np.asarray(images_uint8)
    _check_images(images, "clean_resize")
    if images.dtype != np.uint8:
        raise ValueError(f"clean_resize expects uint8 images in [0, 255], got {images.dtype}")
    out = np.empty((images.shape[0], size, size, 3), np.float32)
    for n, image in enumerate(images):
        for c in range(3):
            channel = Image.fromarray(image[:, :, c].astype(np.float32))  # mode 'F'
            channel = channel.resize((size, size), resample=Image.Resampling.BICUBIC)
            out[n, :, :, c] = np.asarray(channel).clip(0, 255)
    return out


def legacy_resize(images, size: int = INPUT_SIZE) -> jax.Array:
    """pytorch-fid's resize: bilinear, half-pixel centres (align_corners=False), no antialias.

    pytorch-fid applies it to images in [0, 1]; it is linear, so images in [0, 255] give
    255 times the result (up to float32 rounding), ready for
    `fid_inception_features(..., input_scaling="pytorch_fid")`. Returns float32 NHWC.
    """
    images = jnp.asarray(images, jnp.float32)
    _check_images(images, "legacy_resize")
    shape = (images.shape[0], size, size, 3)
    return jax.image.resize(images, shape, method="linear", antialias=False)


# ----------------------------------------------------------------------------- FID


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1 normalisation), both float64, of features [N, D]."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"FID statistics need at least 2 samples, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)): clean-fid's formula, in float64.

    clean-fid takes scipy's `sqrtm` of the product s1 s2 (a complex Schur decomposition, about
    17 s for 2048 features on a 2-core CPU) and keeps its trace. That trace is the sum of the
    square roots of the eigenvalues of s1 s2, which are those of the symmetric matrix F^T s2 F
    for any F with F F^T = s1: Cholesky's factor, or V sqrt(W) from s1's eigendecomposition
    when s1 is singular (fewer images than features). One symmetric eigenvalue problem instead
    of the Schur form: 6-9x faster (benchmarks/fid_distances.py), clean-fid's value to 1e-13
    (relative) on full-rank covariances and 1e-7 on singular ones, where sqrtm is inexact too
    and clean-fid may retry with 1e-6 added to the diagonals; no retry is needed here.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    for name, value in (("mu", mu1), ("mu", mu2), ("sigma", sigma1), ("sigma", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"FID statistics hold a non-finite {name} (NaN or inf features?)")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        _check_symmetric(sigma, name)
    factor = _covariance_factor(sigma1)
    product = factor.T @ sigma2 @ factor
    eigenvalues = _nonnegative(np.linalg.eigvalsh((product + product.T) / 2), "sigma2")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigenvalues).sum())


def _check_symmetric(sigma, name) -> None:
    scale = max(np.abs(sigma).max(), np.finfo(np.float64).tiny)
    if not np.allclose(sigma, sigma.T, rtol=0, atol=1e-8 * scale):
        raise ValueError(f"FID: {name} is not a symmetric covariance matrix (corrupt statistics?)")


def _nonnegative(eigenvalues, name):
    """Eigenvalues of a positive semi-definite matrix: rounding's small negative ones become 0;
    clearly negative ones, where clean-fid's sqrtm would turn complex, are a ValueError."""
    if eigenvalues.min() < -1e-6 * max(np.abs(eigenvalues).max(), np.finfo(np.float64).tiny):
        raise ValueError(f"FID: {name} is not positive semi-definite (smallest eigenvalue "
                         f"{eigenvalues.min():.3g}; corrupt statistics?)")
    return np.clip(eigenvalues, 0.0, None)


def _covariance_factor(sigma):
    """F with F F^T = sigma (symmetric, positive semi-definite)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:  # singular: fewer images than features
        values, vectors = np.linalg.eigh(sigma)
        return vectors * np.sqrt(_nonnegative(values, "sigma1"))


# ----------------------------------------------------------------------------- KID


# Up to this many kernel entries (float64: 256 MB) KID computes every pair's kernel once.
MAX_KERNEL_ENTRIES = 2 ** 25


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0,
                              max_kernel_entries: int = MAX_KERNEL_ENTRIES) -> float:
    """clean-fid's KID: mean over subsets of the unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3.

    Each subset draws m = min(N1, N2, max_subset_size) samples without replacement, first
    from `features2` then from `features1`, with `np.random.RandomState(seed)`: the same
    draws as clean-fid's `kernel_distance` after `np.random.seed(seed)`. Unlike clean-fid
    (which keeps the features' float32), the kernel sums are float64. clean-fid recomputes the
    kernels of every subset (100 x 3 products of m x d by d x m); when the three kernel
    matrices of all pairs have at most `max_kernel_entries` entries they are computed once and
    each subset sums its block of them, which gives the same value to rounding.
    """
    features1 = np.asarray(features1, np.float64)
    features2 = np.asarray(features2, np.float64)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {features1.shape} and "
                         f"{features2.shape}")
    d = features1.shape[1]
    m = min(features1.shape[0], features2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m}")
    def kernel(u, v):
        return (u @ v.T / d + 1) ** 3

    n1, n2 = features1.shape[0], features2.shape[0]
    whole = n1 * n1 + n2 * n2 + n1 * n2 <= max_kernel_entries
    if whole:
        k22, k11, k21 = kernel(features2, features2), kernel(features1, features1), kernel(features2, features1)
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        ix = rng.choice(n2, m, replace=False)
        iy = rng.choice(n1, m, replace=False)
        if whole:  # a block's sums do not depend on its order; sorted rows read memory in order
            ix, iy = np.sort(ix), np.sort(iy)
            kxx, kyy, kxy = k22[np.ix_(ix, ix)], k11[np.ix_(iy, iy)], k21[np.ix_(ix, iy)]
        else:
            x, y = features2[ix], features1[iy]
            kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        a = kxx + kyy
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - kxy.sum() * 2 / m
    return float(total / num_subsets / m)
