"""Loader for the few real samples with ground-truth masks kept beside the repository."""
import os
import pathlib

import numpy as np

ENV_VAR = "SLOT_JAX_REAL_DATA"
REAL_FILES = {
    "tetrominoes": "tetrominoes_efficientmorl/tetrominoes_10samples.npz",
    "clevr_with_masks": "clevr_with_masks_hello-jinwoo/clevr_with_masks_2samples_rgbfixed.npz",
}


def default_root() -> pathlib.Path:
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR])
    repo = pathlib.Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "real"


def entity_masks_to_ids(masks: np.ndarray) -> np.ndarray:
    """[N, E, H, W, 1] {0, 255} entity masks (entity 0 = background) -> int32 [N, H, W] ids."""
    on = masks[..., 0] > 0
    # Entity e gets id e; pixels no entity claims stay background.
    return np.where(on.any(1), on.argmax(1), 0).astype(np.int32)


def load_real_samples(name: str, root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """{"image": uint8 [N, H, W, 3], "mask": int32 [N, H, W], "num_objects": int32 [N]}."""
    if name not in REAL_FILES:
        raise ValueError(f"unknown real sample set {name!r}; valid names: {', '.join(REAL_FILES)}")
    path = pathlib.Path(root if root is not None else default_root()) / REAL_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"real samples not found at {path}; set {ENV_VAR} to the folder holding them")
    with np.load(path) as data:
        image, masks = data["image"], data["mask"]
    num_objects = (masks[:, 1:].reshape(masks.shape[0], masks.shape[1] - 1, -1) > 0).any(-1).sum(1)
    return {
        "image": image.astype(np.uint8),
        "mask": entity_masks_to_ids(masks),
        "num_objects": num_objects.astype(np.int32),
    }
