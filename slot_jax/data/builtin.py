"""Registry of the procedural datasets built into slot_jax."""
import dataclasses
from typing import Callable

import numpy as np

from slot_jax.data import multi_dsprites, scenes, tetrominoes

# generate(seed, split, start, count) -> {"image": uint8 [N, H, W, 3], "mask": int32 [N, H, W]
# (0 = background, objects 1..n in paint order), "num_objects": int32 [N]}.
Generator = Callable[[int, str, int, int], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_size: tuple[int, int]
    max_entities: int  # background included
    generate: Generator


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("tetrominoes", (35, 35), 1 + tetrominoes.NUM_PIECES, tetrominoes.generate),
        DatasetInfo("multi_dsprites", (64, 64), 1 + multi_dsprites.MAX_SPRITES, multi_dsprites.generate),
        DatasetInfo("scenes", (128, 128), 1 + scenes.MAX_OBJECTS, scenes.generate),
    )
}


def get_dataset(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]
