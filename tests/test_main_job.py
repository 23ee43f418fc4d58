"""The report's main job (configs/diffusion.py) end to end on a tiny config: every stage, the
report, resuming, and bad input refused before anything is trained or overwritten."""
import contextlib
import io
import json

import numpy as np
import pytest

from conftest import REPO, held_by_another_process
from slot_jax import main as cli
from slot_jax.training.workdir_lock import LOCK_FILE

DIFFUSION_CONFIG = REPO / "configs" / "diffusion.py"

# Shrinks configs/diffusion.py:quick so that every stage compiles and runs in seconds.
TINY = {
    "autoencoder.data.global_batch_size": 8, "autoencoder.model.slot_size": 16, "autoencoder.model.mlp_hidden": 16,
    "autoencoder.model.encoder.channels": "(8, 8, 8, 8)", "autoencoder.model.encoder.mlp_features": "(16, 16)",
    "autoencoder.model.decoder.channels": "(8, 8, 8)", "autoencoder.train.num_steps": 2,
    "autoencoder.train.log_every": 1, "autoencoder.train.warmup_steps": 1, "autoencoder.eval.batch_size": 8,
    "autoencoder.eval.num_examples": 16, "autoencoder.eval.num_compositions": 8,
    "autoencoder.eval.kmeans_restarts": 1, "autoencoder.eval.num_figure_rows": 4,
    "vae.data.global_batch_size": 8, "vae.model.channels": "(8, 8, 8)", "vae.train.num_steps": 2,
    "vae.train.log_every": 1, "vae.train.warmup_steps": 1, "vae.eval.batch_size": 8, "vae.eval.num_examples": 16,
    "vae.eval.num_figure_rows": 4,
    "data.global_batch_size": 8, "model.slot_size": 16, "model.mlp_hidden": 16,
    "model.encoder.channels": "(8, 8, 8, 8)", "model.encoder.mlp_features": "(16, 16)",
    "model.unet.channels": 8, "model.unet.num_heads": 2, "train.num_steps": 2, "train.log_every": 1,
    "train.warmup_steps": 1, "train.checkpoint_every": 2, "eval.batch_size": 8, "eval.num_examples": 16,
    "eval.num_reconstructions": 4, "eval.num_compositions": 8, "eval.kmeans_restarts": 1,
    "eval.num_figure_rows": 4, "latent_scale_examples": 16, "sampler.num_steps": 2,
}


def _args(workdir, **overrides):
    merged = {**TINY, **overrides}
    return [f"--config={DIFFUSION_CONFIG}:quick", f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in merged.items()]


def _snapshot(directory):
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run of the whole job (2 steps per stage), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("pipeline") / "run"
    with contextlib.redirect_stderr(io.StringIO()) as stderr:  # progress lines, kept beside the workdir
        code = cli.main(_args(workdir))
    (workdir.parent / "stderr.txt").write_text(stderr.getvalue())
    assert code == 0, stderr.getvalue()[-3000:]
    return workdir


def test_training_and_sampling_show_progress(trained):
    lines = (trained.parent / "stderr.txt").read_text().splitlines()
    assert any(line.startswith("step 2/2 | ") and "steps/s | ETA" in line for line in lines)
    for what, count in (("reconstructions", 4), ("compositions", 8)):
        prefix = f"[diffusion] sampling {what} (ddim, 2 steps): image {count}/{count} | "
        assert any(line.startswith(prefix) and "images/s | ETA" in line for line in lines), what


def test_every_stage_is_trained_evaluated_and_reported(trained):
    autoencoder = json.loads((trained / "autoencoder" / "eval_results.json").read_text())
    vae = json.loads((trained / "vae" / "eval_results.json").read_text())
    diffusion = json.loads((trained / "eval_results.json").read_text())
    assert autoencoder["step"] == vae["step"] == diffusion["step"] == 2
    assert vae["latent/shape"] == [16, 16, 3]  # 64x64 Multi-dSprites, three levels: x4
    assert np.isfinite(diffusion["val/loss"]) and diffusion["val/num_images"] == 16
    assert diffusion["reconstruction/num_images"] == 4 and diffusion["composition/num_images"] == 8
    assert (diffusion["sampler/name"], diffusion["sampler/num_steps"]) == ("ddim", 2)
    assert diffusion["fid/skipped"].startswith(("skipped: Inception weights", "disabled"))
    for path in ("figures/val_reconstructions.png", "figures/val_slot_masks.png", "figures/compositions.png",
                 "figures/loss_curves.png", "compositions.npz", "slot_library.npz",
                 "vae/figures/val_reconstructions.png", "autoencoder/figures/compositions.png"):
        assert (trained / path).is_file(), path
    with np.load(trained / "compositions.npz") as compositions:
        assert compositions["images"].shape == (8, 64, 64, 3) and compositions["slots"].shape == (8, 6, 16)
    report = (trained / "report.md").read_text()
    for section in ("## Part 1", "## Part 2", "### Compositional generation", "## Training parameters",
                    "## Segmentation", "## FID", "(figures/compositions.png)", "(vae/figures/val_reconstructions.png)"):
        assert section in report, section
    # The numbers in the report are the run's own.
    assert f"| diffusion | attention | {diffusion['val/attention/ari']:.4f} |" in report
    assert f"| autoencoder | decoder | {autoencoder['val/decoder/ari']:.4f} |" in report


def test_rerun_skips_finished_stages_and_resumes_the_diffusion_model(trained, capsys):
    before = _snapshot(trained / "vae")
    autoencoder_before = _snapshot(trained / "autoencoder")
    assert cli.main(_args(trained, **{"train.num_steps": 4})) == 0
    out = capsys.readouterr().out
    assert "[autoencoder] trained and evaluated at step 2 already" in out
    assert "[vae] trained and evaluated at step 2 already" in out
    assert "trained steps 2..4" in out
    assert _snapshot(trained / "vae") == before and _snapshot(trained / "autoencoder") == autoencoder_before
    logged = [json.loads(line)["step"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert logged[:2] == [1, 2] and max(logged) == 4 and logged.count(1) == 1
    assert json.loads((trained / "eval_results.json").read_text())["step"] == 4


@pytest.mark.parametrize("steps", [0, 1001])
def test_sampler_step_count_out_of_range_is_refused_before_training(tmp_path, capsys, steps):
    workdir = tmp_path / "run"
    assert cli.main(_args(workdir, **{"sampler.num_steps": steps})) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "1..1000" in err and len(err.splitlines()) == 1
    assert not workdir.exists()


def test_vae_checkpoint_of_another_shape_is_refused_before_training(trained, tmp_path, capsys):
    before = _snapshot(trained / "vae")
    workdir = tmp_path / "run"
    code = cli.main(_args(workdir, vae_workdir=trained / "vae", **{"vae.model.latent_channels": 4}))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "latent_channels" in err and len(err.splitlines()) == 1
    assert not workdir.exists() and _snapshot(trained / "vae") == before


def test_a_finished_stage_whose_config_changed_is_refused_not_skipped(trained, capsys):
    before = _snapshot(trained)
    assert cli.main(_args(trained, **{"autoencoder.model.slot_size": 24})) == 2
    err = capsys.readouterr().err.strip()
    assert "slot_size" in err and "autoencoder" in err and len(err.splitlines()) == 1
    assert _snapshot(trained) == before


def test_a_workdir_in_use_by_another_run_is_refused_and_kept(trained, capsys):
    before = _snapshot(trained)
    with held_by_another_process(trained) as other:
        assert cli.main(_args(trained, **{"train.num_steps": 4})) == 2
    err = capsys.readouterr().err.strip()
    assert f"pid {other.pid}" in err and "in use" in err and len(err.splitlines()) == 1
    after = _snapshot(trained)
    for snapshot in (before, after):  # the other process wrote its own pid there
        del snapshot[LOCK_FILE]
    assert after == before


def test_slots_of_another_size_are_refused_by_the_sampler(trained):
    from slot_jax.config_loader import config_from_args
    from slot_jax.errors import UserError
    from slot_jax.training.kinds import build_experiment
    from slot_jax.training.loop import restore_latest

    overrides = {**{k: str(v) for k, v in TINY.items()}, "vae_workdir": str(trained / "vae")}
    config = config_from_args(f"{DIFFUSION_CONFIG}:quick", overrides)
    experiment = build_experiment(config)
    state = restore_latest(experiment, trained)
    decode = experiment.decoder(state.params)
    with pytest.raises(UserError, match=r"\[N, K, 16\]"):
        decode(np.zeros((2, 6, 32), np.float32), None)


def test_eval_mode_rescores_every_stage_and_rewrites_the_report(trained, capsys):
    checkpoints = {stage: _snapshot(trained / stage / "checkpoints") for stage in ("vae", "autoencoder")}
    (trained / "report.md").unlink()
    # Evaluation may sample with another sampler than training did; results and report say which.
    sampler = {"sampler.name": "dpm_solver++", "sampler.num_steps": 3}
    assert cli.main(_args(trained, **sampler) + ["--mode=eval"]) == 0
    out = capsys.readouterr().out
    for stage in ("autoencoder", "vae", "diffusion"):
        assert f"[{stage}] evaluating in" in out
    assert "sampler dpm_solver++ with 3 steps" in (trained / "report.md").read_text()
    latest = max(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
    results = json.loads((trained / "eval_results.json").read_text())
    assert results["step"] == latest
    assert (results["sampler/name"], results["sampler/num_steps"]) == ("dpm_solver++", 3)
    for stage, before in checkpoints.items():
        assert _snapshot(trained / stage / "checkpoints") == before  # evaluation writes no checkpoint


def test_the_diffusion_model_loads_decomposes_and_samples_like_its_evaluation(trained, tmp_path, capsys):
    from PIL import Image
    from sklearn.metrics import adjusted_rand_score

    from slot_jax import decompose
    from slot_jax.data.pipeline import eval_batches
    from slot_jax.trained import load, read_config

    model = load(trained)
    c = model.config
    assert model.kind == "slot_diffusion" and model.image_size == (64, 64)
    batches = list(eval_batches(model.experiment.info, "val", c.eval.num_examples, c.eval.batch_size, c.data.seed))
    images, masks = (np.concatenate([b[key] for b in batches]) for key in ("image", "mask"))
    parts = model.decompose(images)
    assert parts["slots"].shape == (16, c.model.num_slots, 16) and "recon" not in parts
    ari = np.mean([adjusted_rand_score(t.ravel(), p.ravel()) for p, t in zip(parts["segmentation"], masks)])
    results = json.loads((trained / "eval_results.json").read_text())
    assert ari == pytest.approx(results["val/attention/ari"], abs=1e-4)
    first, again, other = (model.decode(parts["slots"][:2], seed=s) for s in (1, 1, 2))
    assert first.shape == (2, 64, 64, 3) and np.array_equal(first, again) and not np.allclose(first, other)

    for i in range(2):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
    out = tmp_path / "parts"
    assert decompose.main([str(tmp_path / "0.png"), str(tmp_path / "1.png"), f"--workdir={trained}",
                           f"--out={out}", "--sample"]) == 0
    assert "sampling (" in capsys.readouterr().err  # progress of the sampler
    with np.load(out / "decomposition.npz") as saved:
        assert saved["recon"].shape == (2, 64, 64, 3)
        np.testing.assert_allclose(saved["slots"], parts["slots"][:2], atol=1e-6)
    assert (out / "decomposition.png").stat().st_size > 0

    moved = tmp_path / "moved"  # a run copied elsewhere finds its VAE beside it
    (moved / "vae" / "checkpoints").mkdir(parents=True)
    config = json.loads((trained / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "vae_workdir": str(tmp_path / "gone")}))
    assert read_config(moved).vae_workdir == str((moved / "vae").absolute())
