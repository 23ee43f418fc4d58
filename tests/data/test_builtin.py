import numpy as np
import pytest

from slot_jax.data.builtin import DATASETS, get_dataset


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_keeps_the_generator_contract(name):
    info = get_dataset(name)
    batch = info.generate(0, "test", 3, 2)
    assert batch["image"].shape == (2, *info.image_size, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (2, *info.image_size) and batch["mask"].dtype == np.int32
    assert batch["num_objects"].dtype == np.int32
    assert batch["mask"].max() < info.max_entities
    empty = info.generate(0, "test", 0, 0)
    assert empty["image"].shape == (0, *info.image_size, 3)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="multi_dsprites, scenes"):
        get_dataset("clevr")


def test_info_is_frozen():
    with pytest.raises(AttributeError):
        get_dataset("tetrominoes").max_entities = 3
