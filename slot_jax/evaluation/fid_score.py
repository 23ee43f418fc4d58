"""FID and KID between image sets, with cached statistics: the API behind `python -m slot_jax.fid`
and the evaluation hooks. PyTorch-free.

Modes (REFERENCE section 3):
- "clean" (clean-fid's default): PIL bicubic resize of each channel in float, (x - 128) / 128.
- "legacy_pytorch" (pytorch-fid): bilinear resize without antialiasing, 2 * x / 255 - 1.

An image source is a folder of PNG/JPEG files (read like clean-fid: converted to RGB), an `.npz`
whose `images` array is uint8 [N, H, W, 3], or an array. A statistics file (`.npz` with `mu`,
`sigma`, `mode` and `image_size`) can stand in for a source; it is only used for the same mode
and image size it was computed at.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
import tempfile

import numpy as np

from slot_jax.evaluation import fid as fid_lib
from slot_jax.errors import UserError
from slot_jax.evaluation.inception import FID_WEIGHTS_URL, load_pytorch_fid_weights, resolve_weights_path

MODES = {"clean": "clean", "legacy_pytorch": "pytorch_fid"}  # mode -> Inception input scaling
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class FIDInputError(ValueError, UserError):
    """Images, statistics or weights that cannot be used; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- images


def as_uint8_images(images, source: str = "images") -> np.ndarray:
    """Validate images [N, H, W, 3]: uint8, or float in [0, 1] (scaled and rounded to uint8)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise FIDInputError(f"{source}: expected RGB images [N, H, W, 3], got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise FIDInputError(f"{source}: images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}")
    if images.size and not np.all(np.isfinite(images)):
        raise FIDInputError(f"{source}: images hold NaN or infinite values")
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise FIDInputError(f"{source}: float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                            f"pass uint8 for [0, 255] data")
    return np.round(images * 255.0).astype(np.uint8)


def load_images(path) -> np.ndarray:
    """uint8 [N, H, W, 3] from a folder of images or an `.npz` with an `images` array."""
    from PIL import Image, UnidentifiedImageError

    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FIDInputError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        images = []
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except (UnidentifiedImageError, OSError) as error:
                raise FIDInputError(f"{file}: unreadable image ({error}); remove or replace it") from None
        sizes = {image.shape for image in images}
        if len(sizes) > 1:
            raise FIDInputError(f"{path}: images of different sizes {sorted(sizes)[:3]}; resize them to one size")
        return np.stack(images)
    if path.suffix == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data:
                    raise FIDInputError(f"{path}: no 'images' array (found {', '.join(data.files) or 'nothing'})")
                return as_uint8_images(data["images"], str(path))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            if isinstance(error, FIDInputError):
                raise
            raise FIDInputError(f"{path}: unreadable npz ({error})") from None
    raise FIDInputError(f"{path}: not a folder of images or an .npz file")


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Statistics:
    mu: np.ndarray
    sigma: np.ndarray
    mode: str
    image_size: tuple
    num_images: int
    features: np.ndarray | None = None  # kept for KID

    def save(self, path) -> None:
        """Atomic: a failure leaves any previous file untouched."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
        os.close(fd)
        try:
            extra = {} if self.features is None else {"features": self.features}
            np.savez(tmp, mu=self.mu, sigma=self.sigma, mode=self.mode, image_size=np.asarray(self.image_size),
                     num_images=self.num_images, **extra)
            os.replace(tmp, path)
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path) -> "Statistics":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(mu=data["mu"], sigma=data["sigma"], mode=str(data["mode"]),
                           image_size=tuple(int(v) for v in data["image_size"]), num_images=int(data["num_images"]),
                           features=data["features"] if "features" in data else None)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise FIDInputError(f"statistics file {path} is unreadable ({error}); delete it to recompute") from None

    def check(self, mode: str, image_size, source: str) -> None:
        if self.mode != mode or tuple(self.image_size) != tuple(image_size):
            raise FIDInputError(
                f"{source} holds statistics for mode {self.mode!r} at {self.image_size[0]}x{self.image_size[1]}, "
                f"not {mode!r} at {image_size[0]}x{image_size[1]}: use another statistics file or delete it")


def is_statistics_file(path) -> bool:
    path = pathlib.Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "mu" in data.files and "sigma" in data.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


# ----------------------------------------------------------------------------- features


class FeatureExtractor:
    """Inception pool3 features of uint8 images under one FID mode."""

    def __init__(self, mode: str = "clean", weights=None, batch_size: int = 50, variables=None):
        if mode not in MODES:
            raise FIDInputError(f"FID mode {mode!r}: choose one of {', '.join(MODES)}")
        if batch_size < 1:
            raise FIDInputError(f"FID batch size must be positive, got {batch_size}")
        self.mode, self.batch_size = mode, batch_size
        if variables is None:
            path = resolve_weights_path(weights)
            try:
                variables = load_pytorch_fid_weights(path)
            except ValueError as error:  # CheckpointError included: truncated, corrupt, wrong layout
                raise FIDInputError(f"Inception weights {path} are unusable ({error}); download "
                                    f"{FID_WEIGHTS_URL} again") from None
        self.variables = variables

    def __call__(self, images, source: str = "images") -> np.ndarray:
        from slot_jax.evaluation.inception import fid_inception_features

        images = as_uint8_images(images, source)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:  # one compiled shape for every batch
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - count, *chunk.shape[1:]), np.uint8)])
            resized = fid_lib.clean_resize(chunk) if self.mode == "clean" else fid_lib.legacy_resize(chunk)
            features = fid_inception_features(self.variables, resized, MODES[self.mode])
            out.append(np.asarray(features)[:count])
        return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)

    def statistics(self, images, source: str = "images", keep_features: bool = True) -> Statistics:
        images = as_uint8_images(images, source)
        if len(images) < 2:
            raise FIDInputError(f"{source}: FID statistics need at least 2 images, got {len(images)}")
        features = self(images, source)
        mu, sigma = fid_lib.feature_statistics(features)
        return Statistics(mu, sigma, self.mode, images.shape[1:3], len(images),
                          features.astype(np.float32) if keep_features else None)


def read_source(path):
    """A statistics file as `Statistics`, anything else as uint8 images (see `load_images`)."""
    return Statistics.load(path) if is_statistics_file(path) else load_images(path)


def source_statistics(source, extractor: FeatureExtractor, *, cache=None, image_size=None) -> Statistics:
    """Statistics of a source (path, or array when `source` is not a path), through `cache`.

    `cache` is a statistics file path: reused when it exists (after checking mode and size),
    otherwise written once the statistics are computed.
    """
    if isinstance(source, (str, os.PathLike)) and is_statistics_file(source):
        stats = Statistics.load(source)
        if image_size is not None:
            stats.check(extractor.mode, image_size, str(source))
        elif stats.mode != extractor.mode:
            raise FIDInputError(f"{source} holds statistics for mode {stats.mode!r}, not {extractor.mode!r}: "
                                f"recompute them in this mode")
        return stats
    name = str(source) if isinstance(source, (str, os.PathLike)) else "images"
    images = load_images(source) if isinstance(source, (str, os.PathLike)) else as_uint8_images(source, name)
    if cache is not None and pathlib.Path(cache).is_file():
        stats = Statistics.load(cache)
        stats.check(extractor.mode, images.shape[1:3], f"cached statistics {cache}")
        if stats.num_images == len(images):
            return stats
        raise FIDInputError(f"cached statistics {cache} are of {stats.num_images} images, this source has "
                            f"{len(images)}: delete the cache file to recompute")
    stats = extractor.statistics(images, name)
    if cache is not None:
        stats.save(cache)
    return stats


def scores(a: Statistics, b: Statistics, *, kid: bool = True) -> dict:
    """FID (and KID when both hold features) between two sets of statistics."""
    if a.mode != b.mode:
        raise FIDInputError(f"statistics of different modes ({a.mode!r} vs {b.mode!r}) cannot be compared")
    try:
        fid = fid_lib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    except ValueError as error:  # statistics of another size, or not a covariance: a corrupt file
        raise FIDInputError(f"{error}; recompute the statistics") from None
    out = {"fid": fid, "mode": a.mode, "num_images": [a.num_images, b.num_images]}
    if kid and a.features is not None and b.features is not None:
        out["kid"] = fid_lib.kernel_inception_distance(a.features, b.features)
    return out
