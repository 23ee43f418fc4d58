"""A trained run as a Python object, for images of your own.

    from slot_jax.trained import load, read_images
    model = load("runs/quick/autoencoder")         # or "runs/quick": the diffusion model
    parts = model.decompose(read_images(["photo.png"], model.image_size))
    parts["slots"], parts["attention"], parts["segmentation"]   # and recon, masks, slot_images
    images = model.decode(parts["slots"])          # the autoencoder's decoder, or the diffusion sampler

`load` rebuilds the model from the workdir's config.json and restores its latest checkpoint onto
one device.
"""
from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np

from slot_jax.data.image_files import read_images  # noqa: F401 (part of this API)
from slot_jax.errors import UserError
from slot_jax.models.autoencoder import attention_masks


def _tuples(value):
    """JSON gives lists where the config file had tuples."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def read_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    path = workdir / "config.json"
    try:
        config = ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
    except FileNotFoundError:
        raise UserError(f"{path} not found: load a workdir that `python -m slot_jax.main` trained") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error}): load a workdir that `python -m slot_jax.main` "
                        "trained") from None
    if config.get("kind") == "slot_diffusion":
        vae = pathlib.Path(config.vae_workdir)
        if not (vae / "checkpoints").is_dir() and (workdir / "vae" / "checkpoints").is_dir():
            config.vae_workdir = str((workdir / "vae").absolute())  # the run was moved
    return config


def _with_inference_changes(config, num_slots, num_iterations):
    """Slot Attention runs with any number of slots and iterations; the parameters fit all of
    them when the initial slots are sampled (not learned one by one)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if num_slots is not None:
        if num_slots < 1:
            raise UserError(f"num_slots must be at least 1, got {num_slots}")
        if num_slots != config.model.num_slots and config.model.slot_init != "gaussian":
            raise UserError(f"this model learned its {config.model.num_slots} initial slots one by one "
                            f"(slot_init={config.model.slot_init!r}): it cannot run with {num_slots}")
        config.model.num_slots = num_slots
    if num_iterations is not None:
        if num_iterations < 1:
            raise UserError(f"num_iterations must be at least 1, got {num_iterations}")
        config.model.num_iterations = num_iterations
    return config


def load(workdir, *, step: int | None = None, num_slots: int | None = None,
         num_iterations: int | None = None) -> "TrainedModel":
    """The model of a workdir at its latest (or the given) checkpoint, optionally run with another
    number of slots or Slot Attention iterations than it was trained with."""
    from slot_jax.training.kinds import build_experiment
    from slot_jax.training.loop import restore_latest

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"workdir {workdir} does not exist: give the --workdir of a trained run")
    saved = read_config(workdir)
    if saved.get("kind") == "vae":
        raise UserError(f"{workdir} holds a VAE, which has no slots: load the workdir of a slot model "
                        "(the main job's top folder, or its autoencoder/ folder)")
    # One device: a run trained on eight GPUs loads on a laptop (its batch sizes need not divide
    # this machine's device count), and XLA already spreads one CPU device over all cores.
    experiment = build_experiment(_with_inference_changes(saved, num_slots, num_iterations),
                                  devices=jax.local_devices()[:1])
    state = restore_latest(experiment, workdir, step=step, saved_config=saved)
    return TrainedModel(experiment, state.params, int(jax.device_get(state.step)))


class TrainedModel:
    """decompose(images) -> slots and masks; decode(slots) -> images."""

    def __init__(self, experiment, params, step: int):
        self.experiment, self.params, self.step = experiment, params, step
        self.config = experiment.config
        self.kind = experiment.kind
        self.image_size = tuple(experiment.info.image_size)
        model = experiment.model
        method = model.encode if self.kind == "slot_diffusion" else None  # the UNet needs no call here

        def apply(params, image, rng):
            outputs = model.apply({"params": params}, image, rngs={"slots": rng}, method=method)
            outputs["attention"] = attention_masks(outputs.pop("attn"), image.shape[1:3])
            return outputs
        self._apply = jax.jit(apply)

    @property
    def num_slots(self) -> int:
        return self.config.model.num_slots

    def prepare(self, images) -> np.ndarray:
        """uint8 [0, 255] or float [0, 1] images [N, H, W, 3] (or one [H, W, 3]) -> float32 [N, H, W, 3]."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or tuple(images.shape[1:3]) != self.image_size:
            raise UserError(f"images of shape {images.shape} do not fit this model: it takes "
                            f"[N, {self.image_size[0]}, {self.image_size[1]}, 3]; read files with "
                            "slot_jax.trained.read_images(paths, model.image_size), which resizes them")
        if not len(images):
            raise UserError("no images to decompose: pass at least one")
        if images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        images = images.astype(np.float32)
        if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
            raise UserError("float images must hold finite values in [0, 1] (or pass uint8 in [0, 255])")
        return images

    def decompose(self, images, *, seed: int | None = None) -> dict:
        """Named numpy outputs for images [N, H, W, 3]: slots [N, K, D]; attention [N, K, H, W]
        (the last Slot Attention iteration's, upsampled bilinearly); segmentation [N, H, W] (argmax
        of the decoder's masks for the autoencoder, of the attention for the diffusion model); and
        for the autoencoder recon [N, H, W, 3], masks [N, K, H, W], slot_images [N, K, H, W, 3].

        The initial slots are drawn from `seed`'s key; by default the evaluation's, so that images
        of the validation set get the slots the run's evaluation scored, in batches of
        config.eval.batch_size as there.
        """
        images = self.prepare(images)
        rng = self.experiment.eval_slots_rng() if seed is None else jax.random.PRNGKey(seed)
        batch_size = self.config.eval.batch_size
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
            out = self._apply(self.params, jax.device_put(padded, self.experiment.data_sharded), rng)
            parts.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
        result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if "masks" in result:
            result["masks"] = result["masks"][..., 0]
            result["segmentation"] = np.argmax(result["masks"], axis=1)
        else:
            result["segmentation"] = np.argmax(result["attention"], axis=1)
        return result

    def decode(self, slots, *, seed: int = 0, on_batch=None) -> np.ndarray:
        """Slot sets [N, K', D] (any number of slots) -> images [N, H, W, 3] in [0, 1]: the
        spatial-broadcast decoder, or the diffusion model's sampler (config.sampler) keyed by `seed`."""
        from slot_jax.evaluation.composition import decode_in_batches
        from slot_jax.training.generation import decoder_of

        slots = np.asarray(slots, np.float32)
        size = self.config.model.slot_size
        if slots.ndim != 3 or slots.shape[-1] != size:
            raise UserError(f"slot sets of shape {slots.shape} do not fit this model: it takes [N, K, {size}]")
        if self.kind == "slot_diffusion":
            decode = self.experiment.decoder(self.params)
        else:
            decode = decoder_of(self.experiment, self.params)
        return decode_in_batches(decode, slots, jax.random.PRNGKey(seed), self.config.eval.batch_size, on_batch)
