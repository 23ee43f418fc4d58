"""Writes WORKDIR/report.md from a pipeline run's own configs, results and figures.

The sections follow the original report: models, training parameters, figures of masks and
reconstructions, loss curves, ARI, compositional generation and FID, for the Slot Attention
autoencoder and the slot-conditioned diffusion model. Nothing in it is typed in by hand except
the original report's published numbers, which are labelled as such.
"""
import datetime
import json
import math
import os
import pathlib

from slot_jax.training.experiment import write_atomically

PUBLISHED = {"autoencoder": {"ARI": 0.1237, "FID": 303.4}, "diffusion": {"ARI": 0.0529, "FID": 211.5}}


def _load(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _figure(workdir: pathlib.Path, path: pathlib.Path, caption: str) -> str:
    if not path.is_file():
        return f"*({caption}: no figure at {path.name})*"
    return f"![{caption}]({os.path.relpath(path, workdir)})"


def _model_lines(config, kind: str) -> list:
    m = config.model
    lines = [f"- Encoder: {len(m.encoder.channels)} conv layers, channels {tuple(m.encoder.channels)}, "
             f"kernels {tuple(m.encoder.kernel_sizes)}, strides {tuple(m.encoder.strides)}, soft position "
             f"embedding, LayerNorm, MLP {tuple(m.encoder.mlp_features)}",
             f"- Slot Attention: {m.num_slots} slots of size {m.slot_size}, {m.num_iterations} iterations, "
             f"{m.slot_init} slot init"]
    if kind == "autoencoder":
        d = m.decoder
        lines.append(f"- Spatial broadcast decoder: broadcast to {tuple(d.broadcast_size)}, channels "
                     f"{tuple(d.channels)}, strides {tuple(d.strides)}, RGB + mask logit per slot")
    else:
        u, v, d, s = m.unet, config.vae.model, config.diffusion, config.sampler
        lines += [f"- VAE (frozen): channels {tuple(v.channels)}, latent channels {v.latent_channels}, "
                  f"downsampling x{2 ** (len(v.channels) - 1)}",
                  f"- UNet: base {u.channels} channels x {tuple(u.channel_mult)}, {u.num_res_blocks} res blocks "
                  f"per level, self- and cross-attention to the slots at levels {tuple(u.attention_levels)}",
                  f"- Diffusion: {d.schedule} betas {d.beta_start}..{d.beta_end} over {d.num_train_steps} steps, "
                  f"{d.prediction} prediction; sampler {s.name} with {s.num_steps} steps (eta {s.eta})"]
    return lines


def _training_table(configs: dict) -> list:
    rows = ["| stage | dataset | steps | batch | learning rate | schedule |", "|---|---|---:|---:|---:|---|"]
    for name, c in configs.items():
        rows.append(f"| {name} | {c.data.name} | {c.train.num_steps} | {c.data.global_batch_size} | "
                    f"{c.train.learning_rate:g} | {c.train.schedule} |")
    return rows


def _scores_table(results: dict) -> list:
    rows = ["| model | masks from | ARI | FG-ARI | mBO | mIoU | published ARI |", "|---|---|---:|---:|---:|---:|---:|"]
    sources = {"autoencoder": ("decoder", "attention"), "diffusion": ("attention",)}
    for name, summary in results.items():
        for source in sources.get(name, ()):
            values = [summary.get(f"val/{source}/{k}") for k in ("ari", "fg_ari", "mbo", "miou")]
            rows.append(f"| {name} | {source} | " + " | ".join(_fmt(v) for v in values) +
                        f" | {PUBLISHED[name]['ARI']} |")
    return rows


def _fid_lines(results: dict) -> list:
    lines = []
    for name in ("autoencoder", "diffusion"):
        summary = results.get(name, {})
        if not summary:
            continue
        if "fid/skipped" in summary:
            lines.append(f"- {name}: {summary['fid/skipped']} (published FID {PUBLISHED[name]['FID']})")
            continue
        parts = [f"{kind} FID {_fmt(summary.get(f'fid/{kind}'))}, KID {_fmt(summary.get(f'kid/{kind}'))}"
                 for kind in ("reconstruction", "composition") if f"fid/{kind}" in summary]
        lines.append(f"- {name} ({summary.get('fid/mode')} mode, {summary.get('fid/num_real')} real images): "
                     + "; ".join(parts) + f" (published composition FID {PUBLISHED[name]['FID']})")
    return lines or ["- no FID results"]


def write_report(config, workdir: pathlib.Path, workdirs: dict) -> pathlib.Path:
    configs = {"autoencoder": config.get("autoencoder"), "vae": config.vae, "diffusion": config}
    configs = {name: configs[name] for name in workdirs}
    results = {name: _load(path / "eval_results.json") for name, path in workdirs.items()}
    lines = ["# slot_jax report", "",
             f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} from the results in "
             f"`{workdir}`. Dataset: built-in `{config.data.name}`.", ""]
    for name, title in (("autoencoder", "Part 1: Slot Attention autoencoder"),
                        ("diffusion", "Part 2: Slot Attention with a latent diffusion decoder")):
        if name not in workdirs:
            continue
        stage_dir, summary = workdirs[name], results[name]
        lines += [f"## {title}", "", "### Model", *_model_lines(configs[name], name), ""]
        if name == "autoencoder":
            recon = (f"Validation reconstruction MSE {_fmt(summary.get('val/loss'))} over "
                     f"{_fmt(summary.get('val/num_images'))} images. Columns: input | reconstruction | "
                     "segmentation | one per slot.")
        else:
            recon = (f"Each validation image next to an image sampled from its own slots: MSE "
                     f"{_fmt(summary.get('reconstruction/mse'))} over {_fmt(summary.get('reconstruction/num_images'))}"
                     f" images; denoising loss {_fmt(summary.get('val/loss'))}.")
        lines += ["### Figures", "", recon, "",
                  _figure(workdir, stage_dir / "figures" / "val_reconstructions.png",
                          "validation images and reconstructions"), "",
                  _figure(workdir, stage_dir / "figures" / "val_segmentation_attention.png",
                          "segmentation from the attention: input | truth | prediction"), "",
                  _figure(workdir, stage_dir / "figures" / "val_slot_masks.png", "slot masks"), "",
                  _figure(workdir, stage_dir / "figures" / "loss_curves.png", "loss curves"), "",
                  "### Compositional generation", "",
                  f"k-means with {_fmt(summary.get('composition/num_clusters'))} clusters over the validation "
                  f"slots (inertia {_fmt(summary.get('composition/inertia'))}), "
                  f"{_fmt(summary.get('composition/num_images'))} new slot sets drawn in "
                  f"`{summary.get('composition/mode')}` mode and decoded.", "",
                  _figure(workdir, stage_dir / "figures" / "compositions.png", "compositions"), ""]
    if "vae" in workdirs:
        vae = results["vae"]
        lines += ["## The latent autoencoder (VAE)", "",
                  f"Validation reconstruction MSE {_fmt(vae.get('val/recon_mse'))} (PSNR "
                  f"{_fmt(vae.get('val/psnr'))} dB), KL {_fmt(vae.get('val/kl'))}; latents "
                  f"{vae.get('latent/shape')} with std {_fmt(vae.get('latent/std'))} on the validation images; the "
                  f"diffusion model scales them by {_fmt(results.get('diffusion', {}).get('latent/scale'))} "
                  "(1 / std on its training images).", "",
                  _figure(workdir, workdirs["vae"] / "figures" / "val_reconstructions.png", "VAE reconstructions"),
                  ""]
    lines += ["## Training parameters", "", *_training_table(configs), "",
              "## Segmentation (ARI family, validation split)", "",
              "ARI over all pixels, FG-ARI without the background, mBO and Hungarian mIoU per image; "
              "the published column is the original report's ARI, measured on its own dataset rather than this one.", "", *_scores_table(results), "",
              "## FID", "", *_fid_lines(results), ""]
    path = workdir / "report.md"
    write_atomically(path, "\n".join(lines))
    return path
