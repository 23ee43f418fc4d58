import numpy as np
import pytest

from generator_checks import assert_deterministic_and_chunkable, assert_generator_contract, assert_streams_differ
from slot_jax.data import generation, scenes


@pytest.fixture(scope="module")
def sample():
    uniforms = generation.example_uniforms(0, "train", 0, 100, scenes._NUM_UNIFORMS)
    layout = scenes.sample_layout(uniforms)
    return layout, scenes.render(layout)


def test_contract_and_determinism(sample):
    _, batch = sample
    assert_generator_contract(batch, 100, (128, 128), max_objects=10)
    np.testing.assert_array_equal(batch["image"], scenes.generate(0, "train", 0, 100)["image"])
    assert_deterministic_and_chunkable(scenes.generate)
    assert_streams_differ(scenes.generate)


def test_three_to_ten_objects_with_hidden_ones_dropped(sample):
    layout, batch = sample
    assert layout["count"].min() == 3 and layout["count"].max() == 10
    assert (batch["num_objects"] <= layout["count"]).all()
    assert (batch["num_objects"] == layout["count"]).mean() > 0.8


def test_background_follows_the_wall_and_floor_rule(sample):
    layout, batch = sample
    background = scenes.background(layout)
    is_background = batch["mask"] == 0
    np.testing.assert_array_equal(batch["image"][is_background], background[is_background])
    for image, horizon in zip(background[:10].astype(int), layout["horizon"][:10]):
        wall, floor = image[:horizon], image[horizon:]
        assert (wall == wall[:, :1]).all()  # constant along each wall row
        assert (np.diff(wall.sum(-1)[:, 0]) <= 1).all()  # darkening towards the horizon
        assert wall[0, 0].sum() > wall[-1, 0].sum() + 20
        assert (np.diff(floor.sum(-1)[:, 64]) >= -1).all()  # brightening towards the viewer
        assert floor[-1, 64].sum() > floor[0, 64].sum() + 20
        assert floor[-1, 64].sum() > floor[-1, 0].sum()  # lit in the middle
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_objects_are_painted_far_to_near_and_shaded(sample):
    layout, batch = sample
    for k, centre_y in enumerate(layout["centre"][..., 0]):
        active = centre_y[: layout["count"][k]]
        assert (np.diff(active) >= 0).all()
    shades = [
        len(np.unique(image[mask == obj], axis=0))
        for image, mask, n in zip(batch["image"][:20], batch["mask"][:20], batch["num_objects"][:20])
        for obj in range(1, n + 1)
        if (mask == obj).sum() > 30
    ]
    assert np.median(shades) > 5


def test_stamps_fit_their_box_and_every_shape_differs():
    inside, shading, specular = scenes.object_stamps()
    assert not inside[..., [0, -1], :].any() and not inside[..., :, [0, -1]].any()
    assert (inside.sum((-1, -2)) > 0).all()
    largest = inside[:, -1, 1].reshape(len(scenes.SHAPE_NAMES), -1)
    assert len({row.tobytes() for row in largest}) == len(scenes.SHAPE_NAMES)
    assert (shading[~inside] == 0).all() and (shading[inside] > 0).all()
    assert specular[2:].max() == 0 and specular[:2].max() > 0.5
