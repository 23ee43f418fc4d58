"""Procedural Tetrominoes, matching DeepMind's dataset as measured on real samples.

35x35 black images with exactly 3 non-overlapping pieces. A piece is 4 blocks of 5x5 px
placed at any pixel offset that keeps it inside the image; its colour is one of the 6 RGB
combinations with one or two channels on (repeats within an image allowed, as in the real
data); each block carries the same bevel shading on every active channel.
"""
import numpy as np

from slot_jax.data import generation

IMAGE_SIZE = 35
BLOCK = 5
NUM_PIECES = 3
PIECE_PIXELS = 4 * BLOCK * BLOCK

# Per active channel, measured on the real samples (identical for every block and channel).
BLOCK_BEVEL = np.array(
    [
        [191, 255, 255, 255, 223],
        [127, 159, 159, 159, 191],
        [127, 159, 159, 159, 191],
        [127, 159, 159, 159, 191],
        [95, 63, 63, 63, 127],
    ],
    dtype=np.uint8,
)

COLOURS = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8
)

_BASE_PIECES = {
    "I": ["####"],
    "O": ["##", "##"],
    "T": ["###", ".#."],
    "S": [".##", "##."],
    "Z": ["##.", ".##"],
    "J": ["#..", "###"],
    "L": ["..#", "###"],
}

# Candidate placements drawn per piece before falling back to sequential rejection.
CANDIDATES_PER_PIECE = 16


def _orientations() -> list[np.ndarray]:
    """The 19 fixed tetrominoes as boolean block grids, grouped by piece."""
    grids = []
    for rows in _BASE_PIECES.values():
        grid = np.array([[c == "#" for c in row] for row in rows])
        seen = []
        for turn in range(4):
            rotated = np.rot90(grid, turn)
            if not any(r.shape == rotated.shape and (r == rotated).all() for r in seen):
                seen.append(rotated)
        grids.extend(seen)
    return grids


SHAPES = _orientations()
NUM_SHAPES = len(SHAPES)
# Block corners in pixels [shape, 4, (y, x)], piece size in pixels [shape, (h, w)].
BLOCK_CORNERS = np.stack([np.argwhere(g) * BLOCK for g in SHAPES])
SHAPE_SIZES = np.array([np.array(g.shape) * BLOCK for g in SHAPES])
# Every pixel of a piece as an offset from its corner, with its bevel value [shape, 100, ...].
_IN_BLOCK = np.argwhere(np.ones((BLOCK, BLOCK), dtype=bool))
PIXEL_OFFSETS = (BLOCK_CORNERS[:, :, None, :] + _IN_BLOCK[None, None]).reshape(NUM_SHAPES, -1, 2)
PIXEL_BEVEL = np.tile(BLOCK_BEVEL.reshape(-1), (NUM_SHAPES, 4))

_DRAWS_PER_CANDIDATE = 3  # shape, y, x
_NUM_UNIFORMS = NUM_PIECES * CANDIDATES_PER_PIECE * _DRAWS_PER_CANDIDATE + NUM_PIECES


def _placements(uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map (shape, y, x) uniforms [..., 3] to a shape index and a corner that fits the image."""
    shape = generation.pick(uniforms[..., 0], NUM_SHAPES)
    room = IMAGE_SIZE - SHAPE_SIZES[shape] + 1
    y = generation.pick(uniforms[..., 1], room[..., 0])
    x = generation.pick(uniforms[..., 2], room[..., 1])
    return shape, y, x


def _blocks_overlap(corners_a: np.ndarray, corners_b: np.ndarray) -> np.ndarray:
    """Whether pieces overlap, given block corners [..., 4, 2] that broadcast together."""
    a, b = corners_a.astype(np.int16), corners_b.astype(np.int16)
    near_y = np.abs(a[..., :, None, 0] - b[..., None, :, 0]) < BLOCK
    near_x = np.abs(a[..., :, None, 1] - b[..., None, :, 1]) < BLOCK
    return (near_y & near_x).any((-1, -2))


def _free_placement(rng: np.random.Generator, placed_blocks: np.ndarray) -> tuple[int, np.ndarray]:
    """Rejection-sample a (shape, corner) overlapping none of placed_blocks [P, 4, 2]."""
    while True:
        shape, y, x = _placements(rng.random(_DRAWS_PER_CANDIDATE))
        corner = np.array([y, x])
        if not _blocks_overlap(BLOCK_CORNERS[shape] + corner, placed_blocks).any():
            return shape, corner


def sample_layout(uniforms: np.ndarray, seed: int, split: str, start: int) -> dict[str, np.ndarray]:
    """Shapes, corners [B, 3, (y, x)] and colour indices of the 3 pieces of each example."""
    batch = uniforms.shape[0]
    num_candidate_draws = NUM_PIECES * CANDIDATES_PER_PIECE * _DRAWS_PER_CANDIDATE
    candidates = uniforms[:, :num_candidate_draws].reshape(
        batch, NUM_PIECES, CANDIDATES_PER_PIECE, _DRAWS_PER_CANDIDATE
    )
    shape = np.zeros((batch, NUM_PIECES), dtype=np.int64)
    corner = np.zeros((batch, NUM_PIECES, 2), dtype=np.int64)
    fallback_rngs = {}
    for piece in range(NUM_PIECES):
        cand_shape, cand_y, cand_x = _placements(candidates[:, piece])
        cand_corner = np.stack([cand_y, cand_x], -1)
        cand_blocks = BLOCK_CORNERS[cand_shape] + cand_corner[:, :, None, :]  # [B, K, 4, 2]
        placed_blocks = BLOCK_CORNERS[shape[:, :piece]] + corner[:, :piece, None, :]  # [B, P, 4, 2]
        collides = _blocks_overlap(cand_blocks[:, :, None], placed_blocks[:, None]).any(-1)
        first_free = np.argmax(~collides, axis=1)
        rows = np.arange(batch)
        shape[:, piece] = cand_shape[rows, first_free]
        corner[:, piece] = cand_corner[rows, first_free]
        for b in np.flatnonzero(collides.all(axis=1)):
            if b not in fallback_rngs:
                fallback_rngs[b] = generation.continued_rng(seed, split, start + b, _NUM_UNIFORMS)
            placed = BLOCK_CORNERS[shape[b, :piece]] + corner[b, :piece, None, :]
            shape[b, piece], corner[b, piece] = _free_placement(fallback_rngs[b], placed)
    colour = generation.pick(uniforms[:, num_candidate_draws:], len(COLOURS))
    return {"shape": shape, "corner": corner, "colour": colour}


def render(layout: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shape, corner, colour = layout["shape"], layout["corner"], layout["colour"]
    batch = shape.shape[0]
    pixels = PIXEL_OFFSETS[shape] + corner[:, :, None, :]  # [B, 3, 100, 2]
    flat = (np.arange(batch)[:, None, None] * IMAGE_SIZE + pixels[..., 0]) * IMAGE_SIZE + pixels[..., 1]
    image = np.zeros((batch * IMAGE_SIZE * IMAGE_SIZE, 3), dtype=np.uint8)
    image[flat.reshape(-1)] = (PIXEL_BEVEL[shape][..., None] * COLOURS[colour][:, :, None, :]).reshape(-1, 3)
    mask = np.zeros(batch * IMAGE_SIZE * IMAGE_SIZE, dtype=np.int32)
    mask[flat.reshape(-1)] = np.broadcast_to(np.arange(1, NUM_PIECES + 1)[None, :, None], flat.shape).reshape(-1)
    return {
        "image": image.reshape(batch, IMAGE_SIZE, IMAGE_SIZE, 3),
        "mask": mask.reshape(batch, IMAGE_SIZE, IMAGE_SIZE),
        "num_objects": np.full(batch, NUM_PIECES, dtype=np.int32),
    }


def generate(seed: int, split: str, start: int, count: int) -> dict[str, np.ndarray]:
    uniforms = generation.example_uniforms(seed, split, start, count, _NUM_UNIFORMS)
    return render(sample_layout(uniforms, seed, split, start))
