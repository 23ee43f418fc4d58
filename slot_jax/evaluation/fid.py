"""FID and KID without PyTorch: resizing, feature statistics, Frechet and kernel distances.

Definitions follow clean-fid (REFERENCE section 3):
- `clean_resize`: clean-fid's "clean" mode, each channel as a float32 PIL image (mode 'F')
  resized to 299x299 with bicubic, clipped to [0, 255], not quantised.
- `legacy_resize`: pytorch-fid's bilinear resize (align_corners=False, no antialiasing).
- `frechet_distance`: clean-fid's `frechet_distance` in float64 with scipy's sqrtm.
- `kernel_inception_distance`: clean-fid's `kernel_distance` (unbiased MMD^2 with the cubic
  polynomial kernel, averaged over random subsets), computed in float64.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import linalg

from slot_jax.evaluation.inception import INPUT_SIZE

_log = logging.getLogger(__name__)


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


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)), as clean-fid computes it.

    If sqrtm is not finite, `eps * I` is added to both covariances and it is retried; a
    complex result keeps its real part, unless the diagonal's imaginary part exceeds 1e-3
    (clean-fid raises then too, as the covariances are not valid).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        _log.warning("FID: sqrtm of the covariance product is not finite; adding %g to the "
                     "diagonal of both covariances", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g} (invalid covariances?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------- KID


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """clean-fid's KID: mean over subsets of the unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3.

    Each subset draws m = min(N1, N2, max_subset_size) samples without replacement, first
    from `features2` then from `features1`, with `np.random.RandomState(seed)`: the same
    draws as clean-fid's `kernel_distance` after `np.random.seed(seed)`. Unlike clean-fid
    (which keeps the features' float32), the kernel sums are float64.
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
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = features2[rng.choice(features2.shape[0], m, replace=False)]
        y = features1[rng.choice(features1.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)
