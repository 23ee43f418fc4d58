"""Pictures for reports: image grids, reconstructions with slots, segmentations, curves.

Every function writes one PNG to `path` (parent folders are created) and returns it as a
`pathlib.Path`. Images are float arrays in [0, 1] (values outside are clipped) or uint8.
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

# tab20's colours (tab10 then their light variants), fixed here so that a segment id keeps
# its colour across figures and matplotlib versions.
_PALETTE_HEX = (
    "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
    "aec7e8 ffbb78 98df8a ff9896 c5b0d5 c49c94 f7b6d2 c7c7c7 dbdb8d 9edae5"
).split()
PALETTE = np.array([[int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)] for h in _PALETTE_HEX],
                   dtype=np.float32)

_PADDING = 2
_PADDING_VALUE = 1.0


def colorize_ids(ids):
    """Integer ids [...] -> RGB [..., 3] in [0, 1] with the fixed palette (ids wrap)."""
    ids = np.asarray(ids).astype(np.int64)
    return PALETTE[np.mod(ids, len(PALETTE))]


def _to_float_rgb(images):
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255
    images = np.clip(images.astype(np.float32), 0.0, 1.0)
    if images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3:  # grey [N, H, W]
        images = np.repeat(images[..., None], 3, axis=-1)
    return images


def _prepare_path(path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_image_grid(path, images, ncols: int, min_cell: int = 1):
    """Tile images [N, H, W, 3] (or grey [N, H, W]) row by row into `ncols` columns.

    Images smaller than `min_cell` pixels are enlarged by an integer factor (nearest neighbour),
    so 35x35 Tetrominoes stay legible and pixel-exact.
    """
    images = _to_float_rgb(images)
    factor = max(1, math.ceil(min_cell / max(images.shape[1:3])))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
    count, height, width, _ = images.shape
    nrows = max(1, math.ceil(count / ncols))
    step_y, step_x = height + _PADDING, width + _PADDING
    canvas = np.full((nrows * step_y + _PADDING, ncols * step_x + _PADDING, 3),
                     _PADDING_VALUE, dtype=np.float32)
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        top, left = _PADDING + row * step_y, _PADDING + col * step_x
        canvas[top:top + height, left:left + width] = image
    path = _prepare_path(path)
    Image.fromarray(np.round(canvas * 255).astype(np.uint8)).save(path, format="PNG")
    return path


def _masks_without_channel(masks):
    masks = np.asarray(masks, dtype=np.float32)
    return masks[..., 0] if masks.ndim == 5 else masks


def save_reconstructions(path, images, recons, masks, slot_images, max_rows: int = 8, min_cell: int = 1):
    """Rows of: input | reconstruction | segmentation | each slot's image times its mask.

    images, recons: [B, H, W, 3]; masks: [B, K, H, W] or [B, K, H, W, 1];
    slot_images: [B, K, H, W, 3]. Masked-out parts of a slot are shown white.
    """
    rows = min(len(images), max_rows)
    images = _to_float_rgb(images[:rows])
    recons = _to_float_rgb(recons[:rows])
    masks = _masks_without_channel(masks[:rows])
    slot_images = _to_float_rgb(slot_images[:rows])
    segmentation = colorize_ids(masks.argmax(axis=1))
    alpha = masks[..., None]
    slots_shown = slot_images * alpha + (1.0 - alpha)
    tiles = np.concatenate(
        [images[:, None], recons[:, None], segmentation[:, None], slots_shown], axis=1)
    return save_image_grid(path, tiles.reshape(-1, *tiles.shape[2:]), ncols=tiles.shape[1], min_cell=min_cell)


def save_segmentation(path, images, pred_ids, true_ids, max_rows: int = 8, min_cell: int = 1):
    """Rows of: input | true segmentation | predicted segmentation (ids [B, H, W])."""
    rows = min(len(images), max_rows)
    images = _to_float_rgb(images[:rows])
    spatial = images.shape[:3]  # ids may carry a trailing channel of 1
    true_rgb = colorize_ids(np.asarray(true_ids)[:rows].reshape(spatial))
    pred_rgb = colorize_ids(np.asarray(pred_ids)[:rows].reshape(spatial))
    tiles = np.stack([images, true_rgb, pred_rgb], axis=1)
    return save_image_grid(path, tiles.reshape(-1, *tiles.shape[2:]), ncols=3, min_cell=min_cell)


def save_slot_masks(path, images, masks, attention=None, max_rows: int = 8, min_cell: int = 1):
    """Rows of: input | each slot's decoder mask (grey, white = 1) [| each slot's attention].

    masks, attention: [B, K, H, W] (or [B, K, H, W, 1]) with values in [0, 1].
    """
    rows = min(len(images), max_rows)
    columns = [_to_float_rgb(images[:rows])[:, None]]
    for group in (masks, attention):
        if group is not None:
            grey = np.clip(_masks_without_channel(group[:rows]), 0.0, 1.0)
            columns.append(np.repeat(grey[..., None], 3, axis=-1))
    tiles = np.concatenate(columns, axis=1)
    return save_image_grid(path, tiles.reshape(-1, *tiles.shape[2:]), ncols=tiles.shape[1], min_cell=min_cell)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metric_series(metrics_jsonl_path, keys):
    """{key: (steps, values)} from a JSONL metrics file; lines without the key are skipped.

    Unparsable lines are skipped too: the writer may be mid-line while we read.
    """
    series = {key: ([], []) for key in keys}
    with open(metrics_jsonl_path) as file:
        for line in file:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not _is_number(record.get("step")):
                continue
            for key in keys:
                value = record.get(key)
                if _is_number(value) and math.isfinite(value):
                    series[key][0].append(record["step"])
                    series[key][1].append(float(value))
    return series


def save_loss_curves(path, metrics_jsonl_path, keys=("loss",)):
    """One subplot per key of its value against step; log y-axis for positive losses."""
    keys = tuple(keys)
    series = read_metric_series(metrics_jsonl_path, keys)
    # A bare Figure on the Agg canvas, not pyplot: no global backend switch, no display.
    figure = Figure(figsize=(6, 2.5 * len(keys)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(keys), 1, squeeze=False)[:, 0]
    for axis, key in zip(axes, keys):
        steps, values = series[key]
        axis.set_title(key)
        axis.set_xlabel("step")
        if not values:
            axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
            continue
        axis.plot(steps, values, linewidth=1)
        if "loss" in key and min(values) > 0:
            axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
    path = _prepare_path(path)
    figure.savefig(path, format="png", dpi=100)
    return path
