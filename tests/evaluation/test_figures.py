"""Figures are real PNGs with the layout (rows x columns of tiles) they promise."""
import json

import numpy as np
from PIL import Image

from slot_jax.evaluation import figures


def open_png(path):
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.load()
    return image


def assert_grid_size(image, nrows, ncols, tile_h, tile_w):
    # Tiles plus a few pixels of padding between and around them.
    width, height = image.size
    assert ncols * tile_w <= width <= ncols * (tile_w + 4) + 4
    assert nrows * tile_h <= height <= nrows * (tile_h + 4) + 4
    np.testing.assert_allclose(width / height, (ncols * tile_w) / (nrows * tile_h), rtol=0.1)


def test_image_grid(tmp_path):
    images = np.random.default_rng(0).random((7, 20, 30, 3))
    path = figures.save_image_grid(tmp_path / "grid.png", images, ncols=3)
    image = open_png(path)
    assert_grid_size(image, nrows=3, ncols=3, tile_h=20, tile_w=30)
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas


def test_reconstructions(tmp_path):
    rng = np.random.default_rng(1)
    batch, slots, size = 10, 4, 16
    images = rng.random((batch, size, size, 3))
    masks = rng.dirichlet(np.ones(slots), (batch, size, size)).transpose(0, 3, 1, 2)
    slot_images = rng.random((batch, slots, size, size, 3))
    path = figures.save_reconstructions(tmp_path / "sub" / "recon.png", images, images,
                                        masks[..., None], slot_images, max_rows=6)
    assert path.exists() and path.stat().st_size > 0
    assert_grid_size(open_png(path), nrows=6, ncols=3 + slots, tile_h=size, tile_w=size)


def test_reconstructions_show_argmax_segmentation_in_palette(tmp_path):
    masks = np.zeros((1, 3, 8, 8), np.float32)
    masks[0, 2] = 1.0  # slot 2 owns every pixel
    blank = np.zeros((1, 8, 8, 3))
    path = figures.save_reconstructions(tmp_path / "r.png", blank, blank, masks,
                                        np.zeros((1, 3, 8, 8, 3)))
    pixels = np.asarray(open_png(path).convert("RGB")).astype(int)
    segmentation_tile = pixels[2:10, 2 + 2 * 10: 10 + 2 * 10]
    expected = np.round(figures.PALETTE[2] * 255)
    assert np.abs(segmentation_tile - expected).max() <= 1


def test_segmentation(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.random((3, 12, 12, 3))
    ids = rng.integers(0, 5, (3, 12, 12))
    path = figures.save_segmentation(tmp_path / "seg.png", images, ids, ids[..., None])
    assert_grid_size(open_png(path), nrows=3, ncols=3, tile_h=12, tile_w=12)


def test_loss_curves(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3}) for s in range(20)]
    lines.append(json.dumps({"step": 20, "eval/ari": 0.5}))  # eval line: other keys
    lines.append('{"step": 21, "loss": ')  # half-written last line
    log.write_text("\n".join(lines))
    path = figures.save_loss_curves(tmp_path / "curves.png", log, keys=("loss", "eval/ari"))
    image = open_png(path)
    width, height = image.size
    assert height > width * 0.6  # two subplots stacked
    assert np.asarray(image.convert("L")).std() > 5

    series = figures.read_metric_series(log, ("loss", "eval/ari", "missing"))
    assert series["loss"][0] == list(range(20))
    assert series["eval/ari"] == ([20], [0.5])
    assert series["missing"] == ([], [])


def test_small_images_are_enlarged_pixel_exactly(tmp_path):
    images = np.random.default_rng(3).random((2, 10, 10, 3))
    path = figures.save_image_grid(tmp_path / "big.png", images, ncols=2, min_cell=30)
    assert_grid_size(open_png(path), nrows=1, ncols=2, tile_h=30, tile_w=30)
    image = np.asarray(open_png(path))
    # each source pixel became a 3x3 block of identical pixels
    pad_top, pad_left = np.argwhere(np.any(image != image[0, 0], axis=-1))[0]
    block = image[pad_top:pad_top + 3, pad_left:pad_left + 3]
    assert (block == block[0, 0]).all()


def test_slot_masks_show_each_slot_in_grey(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.random((3, 12, 12, 3))
    masks = rng.dirichlet(np.ones(4), (3, 12, 12)).transpose(0, 3, 1, 2)
    path = figures.save_slot_masks(tmp_path / "masks.png", images, masks, attention=masks[..., None])
    assert_grid_size(open_png(path), nrows=3, ncols=1 + 4 + 4, tile_h=12, tile_w=12)
    pixels = np.asarray(open_png(path)).astype(int)
    # the first mask tile of row 0 is grey: equal channels, matching the mask values
    tile = pixels[2:14, 2 + 14:14 + 14]
    assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()
    np.testing.assert_allclose(tile[..., 0] / 255, masks[0, 0], atol=1 / 255)
