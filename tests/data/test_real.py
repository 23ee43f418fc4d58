import pathlib

import numpy as np
import pytest

from slot_jax.data import real


def test_tetrominoes_samples_have_three_pieces(real_data_dir):
    data = real.load_real_samples("tetrominoes", real_data_dir)
    assert data["image"].shape == (10, 35, 35, 3) and data["image"].dtype == np.uint8
    assert data["mask"].shape == (10, 35, 35) and data["mask"].dtype == np.int32
    np.testing.assert_array_equal(data["num_objects"], [3] * 10)
    for mask in data["mask"]:
        np.testing.assert_array_equal(np.bincount(mask.ravel(), minlength=4), [925, 100, 100, 100])
    assert (data["image"][data["mask"] == 0] == 0).all()


def test_clevr_samples_keep_entity_ids(real_data_dir):
    data = real.load_real_samples("clevr_with_masks", real_data_dir)
    assert data["image"].shape == (2, 240, 320, 3) and data["mask"].shape == (2, 240, 320)
    np.testing.assert_array_equal(data["num_objects"], [7, 8])
    with np.load(real_data_dir / real.REAL_FILES["clevr_with_masks"]) as raw:
        entity_masks = raw["mask"]
    for ids, masks in zip(data["mask"], entity_masks):
        for entity in range(masks.shape[0]):
            np.testing.assert_array_equal(ids == entity, masks[entity, ..., 0] > 0)


def test_root_defaults_to_the_environment_variable(real_data_dir, monkeypatch):
    monkeypatch.setenv(real.ENV_VAR, str(real_data_dir))
    assert real.load_real_samples("tetrominoes")["image"].shape[0] == 10


def test_default_root_is_the_shared_folder_beside_the_repo(monkeypatch):
    monkeypatch.delenv(real.ENV_VAR, raising=False)
    repo = pathlib.Path(__file__).resolve().parents[2]
    assert real.default_root() == repo.parent / "shared" / "data" / "real"


def test_missing_file_names_path_and_variable(tmp_path):
    with pytest.raises(FileNotFoundError, match=real.ENV_VAR) as error:
        real.load_real_samples("tetrominoes", tmp_path)
    assert str(tmp_path) in str(error.value)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="tetrominoes, clevr_with_masks"):
        real.load_real_samples("objects_room")


def test_entity_masks_to_ids():
    masks = np.zeros((1, 3, 2, 2, 1), np.uint8)
    masks[0, 0, 0, :] = 255
    masks[0, 2, 1, 0] = 255
    masks[0, 1, 1, 1] = 255
    np.testing.assert_array_equal(real.entity_masks_to_ids(masks), [[[0, 0], [2, 1]]])
