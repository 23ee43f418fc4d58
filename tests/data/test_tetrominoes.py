import numpy as np
import pytest

from generator_checks import assert_deterministic_and_chunkable, assert_generator_contract, assert_streams_differ
from slot_jax.data import tetrominoes
from slot_jax.data.real import load_real_samples

# REFERENCE.md section 5, per active channel.
DOCUMENTED_BEVEL = np.array(
    [[191, 255, 255, 255, 223]] + [[127, 159, 159, 159, 191]] * 3 + [[95, 63, 63, 63, 127]]
)
SIX_COLOURS = {(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)}


@pytest.fixture(scope="module")
def generated():
    return tetrominoes.generate(0, "train", 0, 300)


def pieces(image, mask):
    """Yield (block grid, channels on, [blocks, 5, 5, 3] pixels) of every piece in an image."""
    for piece in range(1, mask.max() + 1):
        on = mask == piece
        ys, xs = np.nonzero(on)
        top, left = ys.min(), xs.min()
        grid = np.zeros((4, 4), dtype=bool)
        blocks = []
        for r in range(4):
            for c in range(4):
                window = on[top + 5 * r : top + 5 * r + 5, left + 5 * c : left + 5 * c + 5]
                if window.shape == (5, 5) and window.all():
                    grid[r, c] = True
                    blocks.append(image[top + 5 * r : top + 5 * r + 5, left + 5 * c : left + 5 * c + 5])
        channels_on = tuple(int(v) for v in image[on].max(0) > 0)
        yield grid, channels_on, np.stack(blocks) if blocks else np.zeros((0, 5, 5, 3))


def block_patterns(images, masks):
    """The distinct per-channel 5x5 patterns of all active channels of all blocks."""
    patterns = set()
    for image, mask in zip(images, masks):
        for grid, channels_on, blocks in pieces(image, mask):
            for ch in np.flatnonzero(channels_on):
                patterns.update(block[..., ch].tobytes() for block in blocks)
    return patterns


def test_contract_and_determinism():
    assert_generator_contract(tetrominoes.generate(1, "val", 0, 20), 20, (35, 35), max_objects=3)
    assert_deterministic_and_chunkable(tetrominoes.generate)
    assert_streams_differ(tetrominoes.generate)


def test_three_pieces_of_four_5px_blocks_without_overlap(generated):
    assert (generated["num_objects"] == 3).all()
    for image, mask in zip(generated["image"], generated["mask"]):
        # Overlapping pieces would lose pixels to the later one.
        np.testing.assert_array_equal(np.bincount(mask.ravel(), minlength=4)[1:], [100, 100, 100])
        for grid, _, blocks in pieces(image, mask):
            assert grid.sum() == 4 and len(blocks) == 4


def test_all_19_fixed_orientations_appear_and_are_tetrominoes(generated):
    shapes = set()
    for image, mask in zip(generated["image"], generated["mask"]):
        for grid, _, _ in pieces(image, mask):
            cropped = grid[grid.any(1)][:, grid.any(0)]
            shapes.add((cropped.shape, cropped.tobytes()))
            cells = {tuple(p) for p in np.argwhere(cropped)}
            reached, frontier = set(), [next(iter(cells))]
            while frontier:
                y, x = frontier.pop()
                if (y, x) in cells and (y, x) not in reached:
                    reached.add((y, x))
                    frontier += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
            assert reached == cells
    assert len(shapes) == 19


def test_black_background_and_six_colour_palette(generated):
    image, mask = generated["image"], generated["mask"]
    assert (image[mask == 0] == 0).all()
    assert (image[mask > 0].max(-1) > 0).all()
    colours = {c for im, m in zip(image, mask) for _, c, _ in pieces(im, m)}
    assert colours == SIX_COLOURS


def test_blocks_carry_the_documented_bevel_on_active_channels_only(generated):
    for image, mask in zip(generated["image"][:50], generated["mask"][:50]):
        for _, channels_on, blocks in pieces(image, mask):
            expected = DOCUMENTED_BEVEL[..., None] * np.array(channels_on)
            assert (blocks == expected).all()


def test_positions_are_not_on_a_5px_grid(generated):
    corners = np.array([np.argwhere(m == p).min(0) for m in generated["mask"] for p in (1, 2, 3)])
    assert set(corners[:, 0] % 5) == set(range(5)) and set(corners[:, 1] % 5) == set(range(5))
    assert corners.min() == 0 and (corners + [[15, 15]]).max() >= 30


def test_matches_the_real_samples(generated, real_data_dir):
    real = load_real_samples("tetrominoes", real_data_dir)
    real_patterns = block_patterns(real["image"], real["mask"])
    assert len(real_patterns) == 1
    assert block_patterns(generated["image"], generated["mask"]) == real_patterns
    for ch in range(3):
        assert set(np.unique(generated["image"][..., ch])) == set(np.unique(real["image"][..., ch]))
    for image, mask in zip(real["image"], real["mask"]):
        assert {c for _, c, _ in pieces(image, mask)} <= SIX_COLOURS
        np.testing.assert_array_equal(np.bincount(mask.ravel(), minlength=4)[1:], [100, 100, 100])


def test_rejection_fallback_when_every_candidate_collides():
    # Every candidate of every piece is the same placement, so pieces 2 and 3 must resample.
    size = tetrominoes._NUM_UNIFORMS
    uniforms = np.full((2, size), 0.5)
    layout = tetrominoes.sample_layout(uniforms, seed=0, split="train", start=0)
    batch = tetrominoes.render(layout)
    for mask in batch["mask"]:
        np.testing.assert_array_equal(np.bincount(mask.ravel(), minlength=4)[1:], [100, 100, 100])
    again = tetrominoes.render(tetrominoes.sample_layout(uniforms, seed=0, split="train", start=0))
    np.testing.assert_array_equal(batch["mask"], again["mask"])
    # The resampling continues example 1's own stream, wherever that example is generated.
    alone = tetrominoes.render(tetrominoes.sample_layout(uniforms[1:], seed=0, split="train", start=1))
    np.testing.assert_array_equal(batch["mask"][1], alone["mask"][0])
    assert not np.array_equal(batch["mask"][0], batch["mask"][1])
