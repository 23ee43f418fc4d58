"""The slot-conditioned latent diffusion stage (configs/diffusion.py).

Slot encoder, Slot Attention and UNet train jointly on the latents of a frozen VAE, which is
restored from `config.vae_workdir` (the pipeline trains it there first when it is missing).
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from slot_jax.errors import UserError
from slot_jax.evaluation import figures
from slot_jax.models import diffusion
from slot_jax.models.autoencoder import attention_masks
from slot_jax.models.slot_diffusion import build_slot_diffusion
from slot_jax.training import generation
from slot_jax.training.checkpoint import Checkpointer
from slot_jax.training.diffusion_step import decode_latents, diffusion_eval_step, diffusion_train_step
from slot_jax.training.evaluate import FIGURE_CELL, format_summary, score_split, summarise
from slot_jax.training.experiment import (ExperimentBase, require, check_common, check_generation,
                                          check_slot_encoder, write_atomically)
from slot_jax.training.state import state_from_params
from slot_jax.training.vae_experiment import VAEExperiment, check_vae_config, latent_statistics

def make_noise_schedule(config):
    d = config.diffusion
    return diffusion.make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)


def check_diffusion_config(config, info, num_devices: int) -> None:
    """Everything that can be checked before any stage trains, VAE config included."""
    check_common(config, num_devices)
    check_slot_encoder(config.model)
    check_generation(config.eval)
    require(config.vae.data.name == config.data.name,
             f"config.vae.data.name={config.vae.data.name!r} differs from config.data.name={config.data.name!r}: "
             "the VAE must be trained on the images the diffusion model decodes")
    check_vae_config(config.vae, info, num_devices)
    d, s = config.diffusion, config.sampler
    require(d.prediction in diffusion.PREDICTIONS,
            f"config.diffusion.prediction={d.prediction!r}: choose one of {', '.join(diffusion.PREDICTIONS)}")
    require(s.name in diffusion.SAMPLERS,
            f"config.sampler.name={s.name!r}: choose one of {', '.join(diffusion.SAMPLERS)}")
    make_noise_schedule(config)  # raises on a bad schedule
    diffusion.sampling_timesteps(d.num_train_steps, s.num_steps)  # raises on a bad step count
    require(s.eta >= 0, f"config.sampler.eta={s.eta} must be >= 0")
    require(config.eval.num_reconstructions > 0, "config.eval.num_reconstructions must be positive")
    require(not config.eval.fid or config.eval.num_reconstructions >= 2,
             "FID needs at least 2 images per set: raise config.eval.num_reconstructions or set config.eval.fid=False")
    require(config.latent_scale_examples > 0, "config.latent_scale_examples must be positive")


class DiffusionExperiment(ExperimentBase):
    kind = "slot_diffusion"

    def check(self, config) -> None:
        check_diffusion_config(config, self.info, self.mesh.size)
        require(bool(config.vae_workdir),
                 "config.vae_workdir is empty: run configs/diffusion.py through `python -m slot_jax.main`, "
                 "which trains or finds the VAE first")

    def build(self) -> None:
        c, repl, data = self.config, self.replicated, self.data_sharded
        self.vae_experiment = VAEExperiment(c.vae, devices=self.mesh.devices.flatten())
        self.vae = self.vae_experiment.model
        self.frozen = self._load_frozen_vae(pathlib.Path(c.vae_workdir))
        self.noise_schedule = make_noise_schedule(c)
        self.model = build_slot_diffusion(c.model)
        factor = self.vae.downsampling_factor
        height, width = self.info.image_size
        self.latent_shape = (height // factor, width // factor, c.vae.model.latent_channels)
        steps = dict(model=self.model, vae=self.vae, schedule=self.noise_schedule, prediction=c.diffusion.prediction)

        def init(rng):
            init_rng, slots_rng, train_rng = jax.random.split(rng, 3)
            params = self.model.init({"params": init_rng, "slots": slots_rng}, jnp.zeros(self.image_shape),
                                     jnp.zeros((1, *self.latent_shape)), jnp.zeros((1,), jnp.int32))["params"]
            return state_from_params(params, self.optimizer, train_rng)

        self._init = jax.jit(init, out_shardings=repl)
        train = jax.jit(functools.partial(diffusion_train_step, optimizer=self.optimizer, **steps),
                        in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=0)
        evaluate = jax.jit(functools.partial(diffusion_eval_step, num_true=self.info.max_entities, **steps),
                           in_shardings=(repl, data, repl, repl), out_shardings=(data, data))
        self.train_step = lambda state, batch: train(state, batch, self.frozen)
        self.eval_step = lambda params, batch, rng: evaluate(params, batch, rng, self.frozen)
        self._sample = jax.jit(self._sample_images)

    def _load_frozen_vae(self, vae_workdir: pathlib.Path) -> dict:
        checkpointer = Checkpointer(vae_workdir, async_save=False)
        try:
            if checkpointer.latest_step() is None:
                raise UserError(f"no VAE checkpoint in {vae_workdir / 'checkpoints'}: train it with "
                                f"configs/vae.py or let configs/diffusion.py train it there")
            state = checkpointer.restore(self.vae_experiment.abstract_state(), self.config.vae)
        finally:
            checkpointer.close()
        means = self.vae_experiment.posterior_means(state.params, "train", self.config.latent_scale_examples)
        scale = latent_statistics(means)["latent/scale"]
        self.vae_step = int(jax.device_get(state.step))
        return jax.device_put({"vae": state.params, "latent_scale": jnp.float32(scale)}, self.replicated)

    def _sample_images(self, params, frozen, slots, key):
        """Slot sets [B, K, D] -> images [B, H, W, 3] in [0, 1], sampled with config.sampler."""
        s, d = self.config.sampler, self.config.diffusion
        denoise = lambda x_t, t: self.model.apply({"params": params}, x_t, t, slots, method=self.model.denoise)
        latents = diffusion.sample(denoise, self.noise_schedule, (slots.shape[0], *self.latent_shape), key,
                                   sampler=s.name, num_steps=s.num_steps, eta=s.eta, prediction=d.prediction)
        return decode_latents(self.vae, frozen, latents)

    def decoder(self, params):
        """The common decoder interface of compositional generation: decode(slots, key) -> images."""
        slot_size = self.config.model.slot_size

        def decode(slots, key):
            # Any number of slots can condition the UNet (cross-attention), but not another size.
            if slots.ndim != 3 or slots.shape[-1] != slot_size:
                raise UserError(f"slot sets of shape {tuple(slots.shape)} cannot condition this model: it takes "
                                f"[N, K, {slot_size}]; build the slot library with this model's encoder")
            return self._sample(params, self.frozen, jnp.asarray(slots), key)
        return decode

    def eval_slots_rng(self):
        return jax.random.split(self.eval_rng())[0]  # as diffusion_loss_terms splits the eval key

    def validate(self, params) -> dict:
        per_example, _, _ = score_split(self, params)
        return summarise(per_example, "val", sources=("attention",))

    def evaluate(self, workdir, state) -> dict:
        c = self.config
        rows = c.eval.num_figure_rows
        per_example, outputs, batch = score_split(self, state.params, keep_outputs=rows, collect=True)
        step = int(jax.device_get(state.step))
        summary = {"step": step, "vae/step": self.vae_step, "latent/scale": float(self.frozen["latent_scale"]),
                   # an evaluation may override the sampler the model was trained with
                   "sampler/name": c.sampler.name, "sampler/num_steps": int(c.sampler.num_steps),
                   "sampler/eta": float(c.sampler.eta),
                   **summarise(per_example, "val", sources=("attention",))}
        valid = per_example["valid"].astype(bool)
        slots, images = per_example["slots"][valid], per_example["image"][valid]
        decode = self.decoder(state.params)
        key = jax.random.PRNGKey(c.eval.seed)
        count = min(c.eval.num_reconstructions, len(slots))
        sampler = f"{c.sampler.name}, {c.sampler.num_steps} steps"
        recons = generation.decode_in_batches(decode, slots[:count], key, c.eval.batch_size, generation.progress_reporter(
            count, f"[diffusion] sampling reconstructions ({sampler})"))
        summary["reconstruction/num_images"] = count
        summary["reconstruction/mse"] = float(np.mean((recons - images[:count] / 255.0) ** 2))
        composition = generation.compose(c, decode, slots, step, f"[diffusion] sampling compositions ({sampler})")
        summary.update(composition["summary"])
        summary.update(generation.fid_scores(c, workdir, images, {
            "reconstruction": np.round(recons * 255).astype(np.uint8), "composition": composition["images"]}))
        if jax.process_index() == 0:
            generation.save_composition(workdir, composition)
            self._write_figures(workdir / "figures", batch, outputs, recons[:rows])
            write_atomically(workdir / "eval_results.json", json.dumps(summary, indent=2))
            print(format_summary(summary), flush=True)
        return summary

    def _write_figures(self, directory, batch, outputs, recons) -> None:
        images = batch["image"].astype(np.float32) / 255.0
        rows = min(len(images), len(recons))
        masks = np.asarray(attention_masks(outputs["attn"], images.shape[1:3]))
        pairs = np.stack([images[:rows], recons[:rows]], axis=1).reshape(-1, *images.shape[1:])
        figures.save_image_grid(directory / "val_reconstructions.png", pairs, ncols=2, min_cell=FIGURE_CELL)
        figures.save_slot_masks(directory / "val_slot_masks.png", images, masks[..., None], min_cell=FIGURE_CELL)
        figures.save_segmentation(directory / "val_segmentation_attention.png", images, np.argmax(masks, axis=1),
                                  batch["mask"], min_cell=FIGURE_CELL)
        metrics_file = directory.parent / "metrics.jsonl"
        if metrics_file.exists():
            figures.save_loss_curves(directory / "loss_curves.png", metrics_file,
                                     keys=("loss", "val/loss", "val/attention/fg_ari"))
