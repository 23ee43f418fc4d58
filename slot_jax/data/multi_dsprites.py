"""Procedural Multi-dSprites, colored_on_grayscale flavour.

64x64 images of 2-5 binary sprites (dSprites' square, ellipse and heart; 6 scales in
[0.5, 1]; 40 orientations; random position) of random HSV colour on a random grey
background. Later sprites occlude earlier ones; masks hold visible pixels only, and a
sprite hidden entirely (by later ones or by the border) is dropped (ids stay 1..n in paint order).
"""
import functools

import numpy as np

from slot_jax.data import generation

IMAGE_SIZE = 64
STAMP = 32  # every sprite, at any scale and orientation, fits a 32x32 stamp
# Sprites are painted on a padded canvas so that, as in dSprites, they can reach the borders.
PAD = 8
MIN_SPRITES, MAX_SPRITES = 2, 5
SHAPE_NAMES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
NUM_ORIENTATIONS = 40
# Saturation and value stay high so that no sprite looks grey.
MIN_SATURATION, MIN_VALUE = 0.6, 0.6

_SPRITE_DRAWS = 8  # shape, scale, orientation, y, x, hue, saturation, value
_NUM_UNIFORMS = 2 + MAX_SPRITES * _SPRITE_DRAWS  # + sprite count, background grey


def _inside(shape: str, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Whether points (u right, v down, in px from the sprite centre, unrotated) are inside."""
    if shape == "square":
        half_side = 9.0 * scale
        return (np.abs(u) <= half_side) & (np.abs(v) <= half_side)
    if shape == "ellipse":
        return (u / (12.0 * scale)) ** 2 + (v / (6.0 * scale)) ** 2 <= 1.0
    # Heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3 with y up, about 18 px wide at scale 1.
    x, y = u / (8.0 * scale), -v / (8.0 * scale) + 0.15
    return (x * x + y * y - 1.0) ** 3 <= x * x * y**3


@functools.cache
def sprite_stamps() -> np.ndarray:
    """bool [shape, scale, orientation, STAMP, STAMP]."""
    centre = STAMP // 2 - 1  # on a pixel, so each step of scale adds pixels to the square
    dy, dx = np.mgrid[:STAMP, :STAMP] - centre
    stamps = np.zeros((len(SHAPE_NAMES), len(SCALES), NUM_ORIENTATIONS, STAMP, STAMP), dtype=bool)
    for o in range(NUM_ORIENTATIONS):
        angle = 2 * np.pi * o / NUM_ORIENTATIONS
        cos, sin = np.cos(angle), np.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        for s, shape in enumerate(SHAPE_NAMES):
            for k, scale in enumerate(SCALES):
                stamps[s, k, o] = _inside(shape, u, v, scale)
    return stamps


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Float HSV in [0, 1] [..., 3] -> float RGB in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    index = sector.astype(np.int64) % 6
    return np.stack([np.choose(index, [c[ch] for c in choices]) for ch in range(3)], -1)


def sample_layout(uniforms: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sprite attributes [B, MAX_SPRITES, ...]; corners are stamp top-lefts on the padded canvas."""
    count = MIN_SPRITES + generation.pick(uniforms[:, 0], MAX_SPRITES - MIN_SPRITES + 1)
    grey = generation.pick(uniforms[:, 1], 256).astype(np.uint8)
    sprite = uniforms[:, 2:].reshape(-1, MAX_SPRITES, _SPRITE_DRAWS)
    hsv = np.stack(
        [
            sprite[..., 5],
            MIN_SATURATION + (1 - MIN_SATURATION) * sprite[..., 6],
            MIN_VALUE + (1 - MIN_VALUE) * sprite[..., 7],
        ],
        -1,
    )
    room = IMAGE_SIZE + 2 * PAD - STAMP + 1
    return {
        "count": count,
        "background": grey,
        "shape": generation.pick(sprite[..., 0], len(SHAPE_NAMES)),
        "scale": generation.pick(sprite[..., 1], len(SCALES)),
        "orientation": generation.pick(sprite[..., 2], NUM_ORIENTATIONS),
        "corner": np.stack([generation.pick(sprite[..., 3], room), generation.pick(sprite[..., 4], room)], -1),
        "colour": np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8),
    }


def background(layout: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 [B, H, W, 3]: a flat grey per image."""
    grey = layout["background"][:, None, None, None]
    return np.broadcast_to(grey, (len(grey), IMAGE_SIZE, IMAGE_SIZE, 3)).copy()


def render(layout: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    stamps = sprite_stamps()
    batch = len(layout["count"])
    rows = np.arange(batch)[:, None, None]
    offsets = np.arange(STAMP)
    paint_ids = np.zeros((batch, IMAGE_SIZE + 2 * PAD, IMAGE_SIZE + 2 * PAD), dtype=np.int64)
    for k in range(MAX_SPRITES):
        stamp = stamps[layout["shape"][:, k], layout["scale"][:, k], layout["orientation"][:, k]]
        stamp &= (k < layout["count"])[:, None, None]
        ys = layout["corner"][:, k, 0, None, None] + offsets[None, :, None]
        xs = layout["corner"][:, k, 1, None, None] + offsets[None, None, :]
        paint_ids[rows, ys, xs] = np.where(stamp, k + 1, paint_ids[rows, ys, xs])
    paint_ids = paint_ids[:, PAD : PAD + IMAGE_SIZE, PAD : PAD + IMAGE_SIZE]
    palette = np.concatenate([np.repeat(layout["background"][:, None, None], 3, -1), layout["colour"]], 1)
    image = palette[rows, paint_ids]
    mask, num_objects = generation.renumber_visible(paint_ids, MAX_SPRITES)
    return {"image": image, "mask": mask, "num_objects": num_objects}


def generate(seed: int, split: str, start: int, count: int) -> dict[str, np.ndarray]:
    return render(sample_layout(generation.example_uniforms(seed, split, start, count, _NUM_UNIFORMS)))
