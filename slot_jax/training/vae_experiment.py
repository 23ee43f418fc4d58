"""The latent autoencoder stage (configs/vae.py): a KL-regularised VAE trained on its own.

Its evaluation records reconstructions and the latent statistics; the diffusion stage scales its
latents by 1 / std so that the diffusion runs on roughly unit-variance data (as LDM does).
"""
import functools
import json

import jax
import numpy as np

from slot_jax.evaluation import figures
from slot_jax.models.conv import CONV_IMPLS
from slot_jax.models.vae import build_vae
from slot_jax.training.diffusion_step import vae_eval_step, vae_train_step
from slot_jax.training.evaluate import FIGURE_CELL, format_summary, score_split
from slot_jax.training.experiment import ExperimentBase, require, check_common, write_atomically
from slot_jax.training.state import state_from_params


def check_vae_config(config, info, num_devices: int) -> None:
    check_common(config, num_devices)
    m = config.model
    require(len(m.channels) > 0, "config.model.channels needs one entry per resolution level")
    factor = 2 ** (len(m.channels) - 1)
    height, width = info.image_size
    require(height % factor == 0 and width % factor == 0,
             f"config.model.channels has {len(m.channels)} levels, a downsampling factor of {factor}, but "
             f"{info.name} images are {height}x{width}: use a dataset whose size divides by {factor} or fewer levels")
    require(m.latent_channels > 0, "config.model.latent_channels must be positive")
    require(m.conv_impl in CONV_IMPLS, f"config.model.conv_impl={m.conv_impl!r}: choose one of {', '.join(CONV_IMPLS)}")
    require(config.train.kl_weight >= 0, f"config.train.kl_weight={config.train.kl_weight} must be >= 0")


def latent_statistics(means: np.ndarray) -> dict:
    """Statistics of posterior means [N, h, w, C]; `scale` = 1 / std makes them unit-variance."""
    means = np.asarray(means, np.float64)
    std = float(means.std())
    return {"latent/mean": float(means.mean()), "latent/std": std,
            "latent/channel_mean": [float(v) for v in means.mean(axis=(0, 1, 2))],
            "latent/channel_std": [float(v) for v in means.std(axis=(0, 1, 2))],
            "latent/scale": 1.0 / max(std, 1e-6), "latent/shape": list(means.shape[1:])}


class VAEExperiment(ExperimentBase):
    kind = "vae"

    def check(self, config) -> None:
        check_vae_config(config, self.info, self.mesh.size)

    def build(self) -> None:
        repl, data = self.replicated, self.data_sharded
        self.model = build_vae(self.config.model)
        kl_weight = self.config.train.kl_weight

        def init(rng):
            init_rng, latent_rng, train_rng = jax.random.split(rng, 3)
            image = jax.numpy.zeros(self.image_shape, jax.numpy.float32)
            params = self.model.init({"params": init_rng, "latent": latent_rng}, image)["params"]
            return state_from_params(params, self.optimizer, train_rng)

        self._init = jax.jit(init, out_shardings=repl)
        self.train_step = jax.jit(
            functools.partial(vae_train_step, model=self.model, optimizer=self.optimizer, kl_weight=kl_weight),
            in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
        self.eval_step = jax.jit(functools.partial(vae_eval_step, model=self.model, kl_weight=kl_weight),
                                 in_shardings=(repl, data, repl), out_shardings=(data, data))

    def validate(self, params) -> dict:
        per_example, _, _ = score_split(self, params)
        return summarise_vae(per_example)

    def evaluate(self, workdir, state) -> dict:
        rows = self.config.eval.num_figure_rows
        per_example, outputs, batch = score_split(self, state.params, keep_outputs=rows)
        summary = {"step": int(jax.device_get(state.step)), **summarise_vae(per_example)}
        summary.update(latent_statistics(per_example["latent_mean"][per_example["valid"].astype(bool)]))
        if jax.process_index() == 0:
            figure_dir = workdir / "figures"
            images = batch["image"].astype(np.float32) / 255.0
            recons = np.clip(outputs["recon"], 0.0, 1.0)
            figures.save_image_grid(figure_dir / "val_reconstructions.png",
                                    np.stack([images, recons], axis=1).reshape(-1, *images.shape[1:]),
                                    ncols=2, min_cell=FIGURE_CELL)
            metrics_file = workdir / "metrics.jsonl"
            if metrics_file.exists():
                figures.save_loss_curves(figure_dir / "loss_curves.png", metrics_file,
                                         keys=("loss", "recon_mse", "val/recon_mse"))
            write_atomically(workdir / "eval_results.json", json.dumps(summary, indent=2))
            print(format_summary(summary), flush=True)
        return summary

    def posterior_means(self, params, split: str = "val", num_examples: int | None = None) -> np.ndarray:
        """Posterior means [N, h, w, C] of the first images of a split."""
        per_example, _, _ = score_split(self, params, split, num_examples)
        return per_example["latent_mean"][per_example["valid"].astype(bool)]


def summarise_vae(per_example: dict) -> dict:
    valid = per_example["valid"].astype(bool)
    mse = per_example["recon_mse"][valid]
    return {"val/loss": float(per_example["loss"][valid].mean()), "val/recon_mse": float(mse.mean()),
            "val/kl": float(per_example["kl"][valid].mean()),
            "val/psnr": float(np.mean(-10.0 * np.log10(np.maximum(mse, 1e-10)))),
            "val/num_images": int(valid.sum())}
