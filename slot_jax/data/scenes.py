"""Procedural CLEVR-like scenes: a stand-in for CLEVR while the real data is out of reach.

128x128 images of 3-10 shaded objects (sphere, ellipsoid, square, triangle, rhombus) in the
8 CLEVR colours, standing on a floor below a wall. Objects lower in the image are nearer:
they are drawn larger and later, so they occlude those behind. Masks hold visible pixels
only; an object hidden entirely is dropped (ids stay 1..n in paint order).
"""
import functools

import numpy as np

from slot_jax.data import generation

IMAGE_SIZE = 128
STAMP = 32  # every object fits a 32x32 stamp
MIN_OBJECTS, MAX_OBJECTS = 3, 10
SHAPE_NAMES = ("sphere", "ellipsoid", "square", "triangle", "rhombus")
RADII = np.linspace(4.0, 15.5, 12)  # circumradius in px, quantised so stamps can be precomputed
NUM_ROTATIONS = 24
COLOURS = np.array(  # CLEVR's gray, red, blue, green, brown, purple, cyan, yellow
    [[87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20],
     [129, 74, 25], [129, 38, 192], [41, 208, 208], [255, 238, 51]],
    dtype=np.float32,
)
HORIZON_RANGE = (28, 56)
# Placements tried per object; the first one not crowding earlier objects is kept.
CANDIDATES_PER_OBJECT = 8
_LIGHT = np.array([-0.45, -0.6, 0.66]) / np.linalg.norm([-0.45, -0.6, 0.66])  # x right, y down, z out
_HALFWAY = (_LIGHT + [0, 0, 1]) / np.linalg.norm(_LIGHT + [0, 0, 1])

_OBJECT_DRAWS = 4 + 3 * CANDIDATES_PER_OBJECT  # shape, rotation, colour, shiny; (y, x, size) each
_SCENE_DRAWS = 1 + 1 + 3 + 3 + 2  # count, horizon, wall rgb, floor rgb, wall/floor brightness
_NUM_UNIFORMS = _SCENE_DRAWS + MAX_OBJECTS * _OBJECT_DRAWS


def _shade_curved(nx: np.ndarray, ny: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    normal = np.stack([nx, ny, nz], -1)
    lambert = np.clip(normal @ _LIGHT, 0.0, 1.0)
    specular = np.clip(normal @ _HALFWAY, 0.0, 1.0) ** 30
    return np.where(inside, 0.3 + 0.85 * lambert, 0.0), np.where(inside, specular, 0.0)


def _stamp(shape: str, radius: float, angle: float, dx: np.ndarray, dy: np.ndarray):
    """(inside, shading, specular) of one object on the stamp grid (dx, dy from its centre)."""
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if shape == "sphere":
        inside = dx * dx + dy * dy <= radius * radius
        return (inside, *_shade_curved(dx / radius, dy / radius, inside))
    if shape == "ellipsoid":
        a, b = radius, 0.6 * radius
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        nu, nv = u / a, v / b  # the normal in the ellipse's own frame, turned back to the image
        return (inside, *_shade_curved(cos * nu - sin * nv, sin * nu + cos * nv, inside))
    if shape == "rhombus":
        inside = np.abs(u) / radius + np.abs(v) / (0.6 * radius) <= 1.0
    else:
        sides = {"square": 4, "triangle": 3}[shape]
        edge_angles = 2 * np.pi * (np.arange(sides) + 0.5) / sides
        reach = u[..., None] * np.cos(edge_angles) + v[..., None] * np.sin(edge_angles)
        inside = (reach <= radius * np.cos(np.pi / sides)).all(-1)
    # Flat faces: a gentle gradient, brighter towards the light.
    towards_light = -(dx * _LIGHT[0] + dy * _LIGHT[1]) / (radius * np.linalg.norm(_LIGHT[:2]))
    return inside, np.where(inside, 0.85 + 0.2 * towards_light, 0.0), np.zeros_like(dx)


@functools.cache
def object_stamps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """inside bool, shading and specular float32, each [shape, radius, rotation, STAMP, STAMP]."""
    dy, dx = np.mgrid[:STAMP, :STAMP] - (STAMP - 1) / 2
    shape = (len(SHAPE_NAMES), len(RADII), NUM_ROTATIONS, STAMP, STAMP)
    inside, shading, specular = np.zeros(shape, bool), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for s, name in enumerate(SHAPE_NAMES):
        for r, radius in enumerate(RADII):
            for o in range(NUM_ROTATIONS):
                inside[s, r, o], shading[s, r, o], specular[s, r, o] = _stamp(
                    name, radius, 2 * np.pi * o / NUM_ROTATIONS, dx, dy
                )
    return inside, shading, specular


def _candidate_placements(draws: np.ndarray, horizon: np.ndarray):
    """Centres (y, x) and circumradii of candidates; draws [B, O, K, 3], horizon [B]."""
    half = STAMP // 2
    top = horizon[:, None, None]
    y = top + generation.pick(draws[..., 0], IMAGE_SIZE - half - top + 1)
    x = half + generation.pick(draws[..., 1], IMAGE_SIZE - 2 * half + 1)
    depth = (y - top) / (IMAGE_SIZE - half - top)  # 0 at the horizon, 1 at the front
    radius = (6.0 + 9.5 * draws[..., 2]) * (0.65 + 0.35 * depth)
    return y, x, radius


def sample_layout(uniforms: np.ndarray) -> dict[str, np.ndarray]:
    """Scene and object attributes; objects come sorted far to near (paint order)."""
    batch = uniforms.shape[0]
    scene, objects = uniforms[:, :_SCENE_DRAWS], uniforms[:, _SCENE_DRAWS:].reshape(batch, MAX_OBJECTS, _OBJECT_DRAWS)
    count = MIN_OBJECTS + generation.pick(scene[:, 0], MAX_OBJECTS - MIN_OBJECTS + 1)
    horizon = HORIZON_RANGE[0] + generation.pick(scene[:, 1], HORIZON_RANGE[1] - HORIZON_RANGE[0] + 1)
    wall = (140 + 60 * scene[:, 8:9]) * (0.9 + 0.2 * scene[:, 2:5])
    floor = (100 + 60 * scene[:, 9:10]) * (0.9 + 0.2 * scene[:, 5:8])

    cand_y, cand_x, cand_radius = _candidate_placements(
        objects[..., 4:].reshape(batch, MAX_OBJECTS, CANDIDATES_PER_OBJECT, 3), horizon
    )
    rows = np.arange(batch)
    y, x, radius = (np.zeros((batch, MAX_OBJECTS)) for _ in range(3))
    for k in range(MAX_OBJECTS):
        gap = np.hypot(cand_y[:, k, :, None] - y[:, None, :k], cand_x[:, k, :, None] - x[:, None, :k])
        crowded = (gap < 0.7 * (cand_radius[:, k, :, None] + radius[:, None, :k])) & (
            np.arange(k) < count[:, None]
        )[:, None, :]
        # Keep the first uncrowded candidate, else the last one: some occlusion is fine.
        choice = np.where(crowded.any(-1).all(-1), CANDIDATES_PER_OBJECT - 1, np.argmax(~crowded.any(-1), -1))
        y[:, k], x[:, k], radius[:, k] = (a[rows, k, choice] for a in (cand_y, cand_x, cand_radius))

    active = np.arange(MAX_OBJECTS) < count[:, None]
    order = np.argsort(np.where(active, y, np.inf), axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return {
        "count": count,
        "horizon": horizon,
        "wall": wall.astype(np.float32),
        "floor": floor.astype(np.float32),
        "shape": take(generation.pick(objects[..., 0], len(SHAPE_NAMES))),
        "rotation": take(generation.pick(objects[..., 1], NUM_ROTATIONS)),
        "colour": take(generation.pick(objects[..., 2], len(COLOURS))),
        "shiny": take(objects[..., 3] < 0.5),
        "radius": take(np.abs(radius[..., None] - RADII).argmin(-1)),
        "centre": np.stack([take(y), take(x)], -1).astype(np.int64),
    }


def background(layout: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 [B, H, W, 3]: a wall darkening towards the horizon over a floor lit from the front."""
    ys = np.arange(IMAGE_SIZE, dtype=np.float32)[None, :]
    xs = np.arange(IMAGE_SIZE, dtype=np.float32)
    horizon = layout["horizon"].astype(np.float32)[:, None]
    is_wall = ys < horizon  # [B, H]
    row_light = np.where(is_wall, 1.05 - 0.25 * ys / horizon, 0.7 + 0.4 * (ys - horizon) / (IMAGE_SIZE - horizon))
    spot = 1.0 - 0.2 * ((xs - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2)) ** 2
    column_light = np.where(is_wall[..., None], np.float32(1.0), spot.astype(np.float32))  # [B, H, W]
    row_colour = np.where(is_wall[..., None], layout["wall"][:, None], layout["floor"][:, None]) * row_light[..., None]
    image = row_colour[:, :, None, :] * column_light[..., None]
    return _to_uint8(image)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 255.0) + 0.5).astype(np.uint8)


def render(layout: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    inside, shading, specular = object_stamps()
    batch = len(layout["count"])
    offsets = np.arange(STAMP)
    paint_ids = np.zeros(batch * IMAGE_SIZE * IMAGE_SIZE, dtype=np.int64)
    # For each pixel, which stamp pixel painted it, to look its shading up once at the end.
    stamp_pixel = np.zeros(batch * IMAGE_SIZE * IMAGE_SIZE, dtype=np.int64)
    stamp_index = np.ravel_multi_index((layout["shape"], layout["radius"], layout["rotation"]), inside.shape[:3])
    flat_inside = inside.reshape(-1, STAMP, STAMP)
    local = offsets[:, None] * STAMP + offsets[None, :]
    corner = layout["centre"] - STAMP // 2
    for k in range(MAX_OBJECTS):
        covered = flat_inside[stamp_index[:, k]] & (k < layout["count"])[:, None, None]
        b, r, c = np.nonzero(covered)
        target = (b * IMAGE_SIZE + corner[b, k, 0] + r) * IMAGE_SIZE + corner[b, k, 1] + c
        paint_ids[target] = k + 1
        stamp_pixel[target] = stamp_index[b, k] * STAMP * STAMP + local[r, c]
    image = background(layout).reshape(-1, 3)
    painted = np.flatnonzero(paint_ids)
    owner = (painted // (IMAGE_SIZE * IMAGE_SIZE), paint_ids[painted] - 1)
    source = stamp_pixel[painted]
    lit = COLOURS[layout["colour"][owner]] * shading.reshape(-1)[source][:, None]
    lit += (255.0 * specular.reshape(-1)[source] * layout["shiny"][owner])[:, None]
    image[painted] = _to_uint8(lit)
    paint_ids = paint_ids.reshape(batch, IMAGE_SIZE, IMAGE_SIZE)
    mask, num_objects = generation.renumber_visible(paint_ids, MAX_OBJECTS)
    return {"image": image.reshape(batch, IMAGE_SIZE, IMAGE_SIZE, 3), "mask": mask, "num_objects": num_objects}


def generate(seed: int, split: str, start: int, count: int) -> dict[str, np.ndarray]:
    return render(sample_layout(generation.example_uniforms(seed, split, start, count, _NUM_UNIFORMS)))
