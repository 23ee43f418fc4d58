"""Image files of the user's own, as model inputs: any size and format PIL reads, cropped about the
centre to the model's aspect ratio and resized."""
import pathlib

import numpy as np

from slot_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(paths) -> list[pathlib.Path]:
    """The image files among `paths`, a directory standing for the image files in it (sorted)."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in directory {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"image {path} not found: give image files or directories of them")
    if not files:
        raise UserError("no images given: name image files or directories of them")
    return files


def read_images(paths, size) -> np.ndarray:
    """Image files (or directories of them) -> uint8 [N, height, width, 3]: each is cropped about
    its centre to the model's aspect ratio, then resized (bilinear, antialiased when shrinking)."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    images = []
    for file in image_files(paths):
        try:
            with Image.open(file) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{file} cannot be read as an image ({error}): remove it or convert it to PNG") from None
        w, h = image.size
        crop_w, crop_h = min(w, round(h * width / height)), min(h, round(w * height / width))
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        images.append(np.asarray(image, np.uint8))
    return np.stack(images)
