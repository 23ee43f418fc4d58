"""Scores a trained autoencoder: validation metrics, the real samples, and the figures."""
import json
import pathlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from slot_jax.data.pipeline import batches_of, eval_batches
from slot_jax.data.real import load_real_samples
from slot_jax.errors import UserError
from slot_jax.evaluation import figures
from slot_jax.evaluation.segmentation import miou_totals_from_tables
from slot_jax.models.autoencoder import attention_masks
from slot_jax.training import generation
from slot_jax.training import mesh as mesh_lib
from slot_jax.training.checkpoint import Checkpointer
from slot_jax.training.experiment import Experiment, prepare_workdir, write_atomically

FIGURE_CELL = 96  # small images are enlarged to at least this many pixels in the figures
REAL_SAMPLES = {"tetrominoes": "tetrominoes"}  # built-in dataset -> real samples it must transfer to


def local_slice(batch: dict) -> dict:
    count, index = jax.process_count(), jax.process_index()
    size = len(batch["image"]) // count
    return {k: v[index * size:(index + 1) * size] for k, v in batch.items()}


def score_batches(experiment, params, batches, *, keep_outputs: int = 0, collect: bool = False):
    """Runs the eval step over batches. Returns (per-example results, first outputs, first batch).

    With `collect`, the results also hold every example's `slots` and `image`, and `recon` (uint8)
    when the model reconstructs in one pass, for compositional generation and FID.
    """
    per_example, kept_outputs, kept_batch = {}, None, None
    for batch in batches:
        device_batch = mesh_lib.global_batch(local_slice(batch), experiment.mesh)
        outputs, results = experiment.eval_step(params, device_batch, experiment.eval_rng())
        if collect:
            results = {**results, "slots": outputs["slots"]}
            if "recon" in outputs:
                results["recon"] = jax.numpy.round(jax.numpy.clip(outputs["recon"], 0, 1) * 255).astype("uint8")
        results = multihost_utils.process_allgather(results, tiled=True)
        if collect:
            results["image"] = batch["image"]
        for key, value in results.items():
            per_example.setdefault(key, []).append(np.asarray(value))
        if keep_outputs and kept_outputs is None:
            kept_outputs = multihost_utils.process_allgather(outputs, tiled=True)
            kept_outputs = jax.tree.map(lambda x: np.asarray(x[:keep_outputs]), kept_outputs)
            kept_batch = {k: v[:keep_outputs] for k, v in batch.items()}
    return {k: np.concatenate(v) for k, v in per_example.items()}, kept_outputs, kept_batch


def summarise(per_example: dict, prefix: str, sources=("decoder", "attention")) -> dict:
    """Dataset means: ARI over all valid images; FG-ARI, mBO and Hungarian mIoU (per-image mean,
    then the mean over images) over the valid images that have at least one object."""
    valid = per_example["valid"].astype(bool)
    summary = {f"{prefix}/loss": float(per_example["loss"][valid].mean()),
               f"{prefix}/num_images": int(valid.sum())}
    for source in sources:
        with_objects = valid & per_example[f"{source}/has_foreground"].astype(bool)
        summary[f"{prefix}/{source}/ari"] = float(per_example[f"{source}/ari"][valid].mean())
        iou_sum, num_objects = miou_totals_from_tables(per_example[f"{source}/table"], with_objects)
        per_example[f"{source}/miou"] = iou_sum / np.maximum(num_objects, 1.0)
        for name in ("fg_ari", "mbo", "miou"):
            scores = per_example[f"{source}/{name}"][with_objects]
            summary[f"{prefix}/{source}/{name}"] = float(scores.mean()) if scores.size else float("nan")
        # mBO averaged over all objects of the split rather than per image first.
        objects = per_example[f"{source}/num_objects"][valid].sum()
        summary[f"{prefix}/{source}/mbo_per_object"] = (
            float(per_example[f"{source}/mbo_iou_sum"][valid].sum() / objects) if objects else float("nan"))
    return summary


def score_split(experiment, params, split: str = "val", num_examples: int | None = None, **kwargs):
    """`score_batches` over the first examples of a split (config.eval.num_examples by default)."""
    c = experiment.config
    batches = eval_batches(experiment.info, split, num_examples or c.eval.num_examples, c.eval.batch_size,
                           c.data.seed)
    return score_batches(experiment, params, batches, **kwargs)


def run_validation(experiment, params, *, keep_outputs: int = 0, collect: bool = False):
    """(summary, first outputs, first batch), plus the per-example results when `collect`."""
    per_example, outputs, batch = score_split(experiment, params, keep_outputs=keep_outputs, collect=collect)
    if collect:
        return summarise(per_example, "val"), outputs, batch, per_example
    return summarise(per_example, "val"), outputs, batch


def evaluate_real_samples(experiment, params, *, keep_outputs: int = 0):
    """Scores the real samples of the dataset the model was trained on, when they are present."""
    name = REAL_SAMPLES.get(experiment.config.data.name)
    if name is None:
        return {}, None, None
    try:
        samples = load_real_samples(name)
    except FileNotFoundError as error:
        return {"real/skipped": str(error)}, None, None
    batches = batches_of(samples, experiment.config.eval.batch_size)
    per_example, outputs, batch = score_batches(experiment, params, batches, keep_outputs=keep_outputs)
    return summarise(per_example, "real"), outputs, batch


def write_figures(directory: pathlib.Path, batch: dict, outputs: dict, *, prefix: str = "val") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    images = batch["image"].astype(np.float32) / 255.0
    recons = np.clip(outputs["recon"], 0.0, 1.0)
    figures.save_reconstructions(directory / f"{prefix}_reconstructions.png", images, recons,
                                 outputs["masks"], np.clip(outputs["slot_images"], 0.0, 1.0), min_cell=FIGURE_CELL)
    upsampled_attention = np.asarray(attention_masks(outputs["attn"], images.shape[1:3]))
    figures.save_slot_masks(directory / f"{prefix}_slot_masks.png", images, outputs["masks"], upsampled_attention,
                            min_cell=FIGURE_CELL)
    decoder_ids = np.argmax(outputs["masks"][..., 0], axis=1)
    attention_ids = np.argmax(upsampled_attention, axis=1)
    for source, ids in (("decoder", decoder_ids), ("attention", attention_ids)):
        figures.save_segmentation(directory / f"{prefix}_segmentation_{source}.png", images, ids, batch["mask"],
                                  min_cell=FIGURE_CELL)


def format_summary(summary: dict) -> str:
    lines = [f"evaluation at step {summary.get('step')}:"]
    for key, value in summary.items():
        if key != "step":
            lines.append(f"  {key:32s} {value:.4f}" if isinstance(value, float) else f"  {key:32s} {value}")
    return "\n".join(lines)


def evaluate(config, workdir, *, state=None, experiment=None) -> dict:
    """Scores the latest checkpoint (or `state`) and writes eval_results.json and figures/.

    Training passes its own `experiment` so the jitted steps are not built and compiled twice.
    """
    workdir = prepare_workdir(workdir, create=False)
    experiment = experiment or Experiment(config)
    if state is None:
        checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=False)
        if checkpointer.latest_step() is None:
            raise UserError(f"no checkpoint in {workdir / 'checkpoints'}: train first with --mode=train")
        state = checkpointer.restore(experiment.abstract_state(), config)
        checkpointer.close()
    rows = config.eval.num_figure_rows
    summary, outputs, batch, per_example = run_validation(experiment, state.params, keep_outputs=rows, collect=True)
    step = int(jax.device_get(state.step))
    summary = {"step": step, **summary}
    real_summary, real_outputs, real_batch = evaluate_real_samples(experiment, state.params, keep_outputs=rows)
    summary.update(real_summary)
    valid = per_example["valid"].astype(bool)
    composition = generation.compose(config, generation.decoder_of(experiment, state.params),
                                     per_example["slots"][valid], step)
    summary.update(composition["summary"])
    summary.update(generation.fid_scores(config, workdir, per_example["image"][valid], {
        "reconstruction": per_example["recon"][valid], "composition": composition["images"]}))
    if jax.process_index() == 0:
        generation.save_composition(workdir, composition)
        figure_dir = workdir / "figures"
        write_figures(figure_dir, batch, outputs)
        if real_outputs is not None:
            write_figures(figure_dir, real_batch, real_outputs, prefix="real")
        metrics_file = workdir / "metrics.jsonl"
        if metrics_file.exists():
            figures.save_loss_curves(figure_dir / "loss_curves.png", metrics_file,
                                     keys=("loss", "val/loss", "val/decoder/fg_ari", "val/attention/fg_ari"))
        write_atomically(workdir / "eval_results.json", json.dumps(summary, indent=2))
        print(format_summary(summary), flush=True)
    return summary
