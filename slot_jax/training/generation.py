"""Evaluation of generation: the slot library, compositional samples and FID/KID.

Writes into the workdir: slot_library.npz, compositions.npz (every generated image and its slot
set), figures/compositions.png, and fid_stats/ (statistics of the validation images, reused by
later evaluations of the same mode, image size and image count).
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from slot_jax.evaluation import fid_score
from slot_jax.evaluation.composition import (LIBRARY_FILE, build_slot_library, decode_in_batches,
                                             sample_slot_sets, save_compositions)
from slot_jax.evaluation.inception import WeightsNotFoundError
from slot_jax.training.writers import Progress


def decoder_of(experiment, params):
    """The autoencoder's decoder behind the common interface decode(slots, key) -> images."""
    decoder = experiment.model.decoder
    apply = jax.jit(lambda p, slots: decoder.apply({"params": p}, slots)["recon"])
    return lambda slots, key: apply(params["decoder"], slots)


def progress_reporter(total: int, label: str):
    """`on_batch` for decode_in_batches: a progress line per batch (from the chief process only)."""
    progress = Progress(total, 0, unit="image", label=label, enabled=jax.process_index() == 0)
    return lambda done: progress.update(done, {})


def compose(config, decode, slots, step: int, progress_label: str = "") -> dict:
    """k-means library of `slots` [N, K, D] and sampled slot sets, decoded. Nothing is written
    here (see `save_composition`), so a later failure leaves the previous results in place.
    With a `progress_label`, the decoding prints progress lines."""
    e = config.eval
    key = jax.random.PRNGKey(e.seed)
    library_key, sample_key, decode_key = jax.random.split(key, 3)
    num_clusters = min(e.num_clusters, slots.shape[0] * slots.shape[1])
    library = build_slot_library(slots, num_clusters, library_key, num_restarts=e.kmeans_restarts,
                                 meta={"step": step, "dataset": config.data.name, "split": "val"})
    slot_sets = sample_slot_sets(library, e.num_compositions, sample_key, mode=e.composition_mode)
    on_batch = progress_reporter(len(slot_sets), progress_label) if progress_label else None
    images = decode_in_batches(decode, slot_sets, decode_key, e.batch_size, on_batch)
    summary = {"composition/num_clusters": num_clusters, "composition/inertia": library.inertia,
               "composition/num_images": int(len(images)), "composition/mode": e.composition_mode}
    return {"summary": summary, "library": library, "slot_sets": slot_sets, "images": images}


def save_composition(workdir: pathlib.Path, composition: dict) -> None:
    composition["library"].save(workdir / LIBRARY_FILE)
    images, slot_sets = composition["images"], composition["slot_sets"]
    save_compositions(workdir / "figures", "compositions", images[:64], slot_sets[:64])
    tmp = workdir / "compositions.tmp.npz"
    np.savez_compressed(tmp, images=np.round(images * 255).astype(np.uint8), slots=slot_sets)
    tmp.replace(workdir / "compositions.npz")


def fid_scores(config, workdir: pathlib.Path, real_images, generated: dict) -> dict:
    """FID (and KID) of each generated set against the real images, or a note saying why not."""
    e = config.eval
    if not e.fid:
        return {"fid/skipped": "disabled by config.eval.fid=False"}
    try:
        extractor = fid_score.FeatureExtractor(e.fid_mode, e.fid_weights or None, e.fid_batch_size)
    except WeightsNotFoundError as error:
        return {"fid/skipped": f"skipped: {error}"}
    height, width = real_images.shape[1:3]
    name = f"{config.data.name}_val_{e.fid_mode}_{height}x{width}_{len(real_images)}.npz"
    cache = workdir / "fid_stats" / name
    if jax.process_index() != 0 and not cache.is_file():
        cache = None  # one writer
    real = fid_score.source_statistics(real_images, extractor, cache=cache)
    summary = {"fid/mode": e.fid_mode, "fid/num_real": real.num_images}
    for name, images in generated.items():
        result = fid_score.scores(real, extractor.statistics(images, name))
        summary[f"fid/{name}"] = result["fid"]
        if "kid" in result:
            summary[f"kid/{name}"] = result["kid"]
    return summary
