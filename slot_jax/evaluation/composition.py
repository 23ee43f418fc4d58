"""Compositional generation: a k-means library of a dataset's slots, new slot sets drawn from it,
decoded by any decoder.

A decoder is any callable `decode(slots [N, K, D], key) -> images [N, H, W, 3] in [0, 1]`: the
spatial broadcast decoder ignores the key, a diffusion sampler uses it.

Sampling modes for a new set of K slots:
- "cluster" (the report's): each slot is a random member of a uniformly chosen cluster; clusters
  are distinct within a set when there are at least K non-empty clusters.
- "centre": as "cluster", but each slot is the chosen cluster's centre.
- "per_position": slot k is slot k of a random library image, a different image per position;
  meaningful with learned (position-specific) slot initialisation.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import zipfile
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from slot_jax.errors import UserError
from slot_jax.evaluation.kmeans import kmeans

SAMPLING_MODES = ("cluster", "centre", "per_position")
LIBRARY_FILE = "slot_library.npz"
Decoder = Callable[[jax.Array, jax.Array], jax.Array]


class LibraryError(ValueError, UserError):
    """A slot library file that cannot be used: missing, corrupt, or for another model."""


@dataclasses.dataclass
class SlotLibrary:
    slots: np.ndarray     # [N, K, D]: the slot sets of N encoded images
    centres: np.ndarray   # [C, D]
    labels: np.ndarray    # [N * K]: cluster of each slot, in slots.reshape(-1, D) order
    inertia: float
    meta: dict            # provenance: checkpoint step, dataset, split, ...

    @property
    def num_clusters(self) -> int:
        return self.centres.shape[0]

    def save(self, path) -> None:
        """Writes atomically: a failing save leaves any previous library in place."""
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, slots=self.slots, centres=self.centres, labels=self.labels,
                 inertia=np.float64(self.inertia), meta=json.dumps(self.meta))
        tmp.replace(path)

    @classmethod
    def load(cls, path, slot_size: int | None = None) -> "SlotLibrary":
        path = pathlib.Path(path)
        if not path.is_file():
            raise LibraryError(f"slot library {path} not found: build it with build_slot_library (eval does)")
        try:
            with np.load(path, allow_pickle=False) as data:
                library = cls(slots=data["slots"], centres=data["centres"], labels=data["labels"],
                              inertia=float(data["inertia"]), meta=json.loads(str(data["meta"])))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise LibraryError(f"slot library {path} is unreadable ({error}): delete it and rebuild") from None
        if slot_size is not None and library.slots.shape[-1] != slot_size:
            raise LibraryError(f"slot library {path} holds slots of size {library.slots.shape[-1]}, the model's "
                               f"are {slot_size}: it was built by another model; delete it and rebuild")
        return library


def build_slot_library(slots, num_clusters: int, key, *, num_restarts: int = 4, max_iter: int = 300,
                       meta: dict | None = None) -> SlotLibrary:
    """k-means over every slot of slot sets [N, K, D]."""
    slots = np.asarray(slots, np.float32)
    if slots.ndim != 3:
        raise ValueError(f"slot sets must be [N, K, D], got shape {slots.shape}")
    flat = slots.reshape(-1, slots.shape[-1])
    result = kmeans(flat, num_clusters, key, num_restarts=num_restarts, max_iter=max_iter)
    return SlotLibrary(slots=slots, centres=np.asarray(result.centres), labels=np.asarray(result.labels),
                       inertia=float(result.inertia), meta=dict(meta or {}))


def sample_slot_sets(library: SlotLibrary, num_sets: int, key, mode: str = "cluster",
                     num_slots: int | None = None) -> np.ndarray:
    """New slot sets [num_sets, K, D] (K defaults to the library's slots per image)."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode {mode!r}: choose one of {', '.join(SAMPLING_MODES)}")
    num_images, k_library, dim = library.slots.shape
    k = num_slots or k_library
    flat = jnp.asarray(library.slots.reshape(-1, dim))
    if mode == "per_position":
        if k != k_library:
            raise ValueError(f"per_position sampling keeps the library's {k_library} slots per set, not {k}")
        images = jax.random.randint(key, (num_sets, k), 0, num_images)
        return np.asarray(flat[images * k + jnp.arange(k)])
    # Members of cluster c are order[start[c] : start[c] + count[c]].
    counts = np.bincount(library.labels, minlength=library.num_clusters)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(library.labels, kind="stable")
    non_empty = jnp.asarray(np.flatnonzero(counts))
    distinct = len(non_empty) >= k

    def one_set(set_key):
        cluster_key, member_key = jax.random.split(set_key)
        clusters = jax.random.choice(cluster_key, non_empty, (k,), replace=not distinct)
        if mode == "centre":
            return jnp.asarray(library.centres)[clusters]
        counts_k = jnp.asarray(counts)[clusters]
        offset = jnp.floor(jax.random.uniform(member_key, (k,)) * counts_k).astype(jnp.int32)
        members = jnp.asarray(order)[jnp.asarray(starts)[clusters] + jnp.minimum(offset, counts_k - 1)]
        return flat[members]

    return np.asarray(jax.vmap(one_set)(jax.random.split(key, num_sets)))


def decode_in_batches(decode: Decoder, slot_sets, key, batch_size: int,
                      on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Decodes slot sets [N, K, D] in batches of min(batch_size, N), the last one padded to a whole
    batch so that one compiled shape serves all -> [N, H, W, 3]. `on_batch(images_done)` is called
    after each batch (progress reports: a diffusion decoder samples for minutes per batch on a CPU)."""
    slot_sets = np.asarray(slot_sets, np.float32)
    batch_size = max(1, min(batch_size, len(slot_sets)))
    images = []
    for start in range(0, len(slot_sets), batch_size):
        chunk = slot_sets[start:start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        out = decode(jnp.asarray(padded), jax.random.fold_in(key, start))
        images.append(np.asarray(out)[:len(chunk)])
        if on_batch is not None:
            on_batch(start + len(chunk))
    return np.clip(np.concatenate(images), 0.0, 1.0)


def save_compositions(directory, name: str, images, slot_sets, *, columns: int = 8, min_cell: int = 96) -> dict:
    """`name`.png (a grid of the images) and `name`.npz (uint8 images and their slot sets)."""
    from slot_jax.evaluation.figures import save_image_grid

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images)
    png = directory / f"{name}.png"
    save_image_grid(png, images, columns, min_cell=min_cell)
    npz = directory / f"{name}.npz"
    np.savez_compressed(npz, images=np.round(images * 255).astype(np.uint8), slots=np.asarray(slot_sets))
    return {"png": str(png), "npz": str(npz)}
