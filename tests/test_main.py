"""The command line end to end: train, kill, resume, evaluate, and refuse bad input safely."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SHARED_REAL, random_inception_variables, save_inception_pth
from slot_jax import main as cli
from slot_jax.evaluation.composition import SlotLibrary

# The CLI's processes see the tests' four devices, compile options and compilation cache
# (tests/conftest.py), so a program one of them compiled is loaded by the next.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
if "--xla_force_host_platform_device_count" not in ENV.get("XLA_FLAGS", ""):
    ENV["XLA_FLAGS"] = ENV.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"


def _snapshot(directory):
    """Every file under the directory with its size and modification time."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def _run_cli(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr().err


def test_train_kill_resume_evaluate(tmp_path, tiny_args):
    workdir = tmp_path / "run"
    # No Inception weights anywhere: FID is skipped with a note.
    env = {**ENV, "HOME": str(tmp_path / "home"), "SLOT_JAX_INCEPTION_WEIGHTS": ""}
    args = tiny_args(workdir, **{"train.num_steps": 1000, "train.checkpoint_every": 2, "train.eval_every": 1000})
    process = subprocess.Popen([sys.executable, "-m", "slot_jax.main", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    # Orbax renames a finished checkpoint into place, so a numeric directory is a complete one.
    while time.time() < deadline and not any(p.name.isdigit() and int(p.name) >= 4
                                             for p in (workdir / "checkpoints").glob("*")):
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    assert steps and steps[-1] >= 4, f"no checkpoint before the kill: {steps}"
    resumed_from = steps[-1]

    final = resumed_from + 4
    result = subprocess.run([sys.executable, "-m", "slot_jax.main",
                             *tiny_args(workdir, **{"train.num_steps": final, "train.checkpoint_every": 2,
                                                    "train.eval_every": 1000})],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"trained steps {resumed_from}..{final}" in result.stdout
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == final
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["step"] == final and results["val/num_images"] == 16
    for key in ("val/decoder/ari", "val/decoder/fg_ari", "val/decoder/mbo", "val/attention/fg_ari"):
        assert -1.0 <= results[key] <= 1.0
    if (SHARED_REAL / "tetrominoes_efficientmorl").exists():  # the 10 real samples are scored too
        assert results["real/num_images"] == 10 and -1.0 <= results["real/decoder/fg_ari"] <= 1.0
        assert (workdir / "figures" / "real_reconstructions.png").stat().st_size > 0
    for figure in ("val_reconstructions.png", "val_segmentation_decoder.png", "val_segmentation_attention.png",
                   "loss_curves.png", "compositions.png"):
        assert (workdir / "figures" / figure).stat().st_size > 0
    assert 0.0 <= results["val/decoder/miou"] <= 1.0 and 0.0 <= results["val/decoder/mbo_per_object"] <= 1.0
    # Compositional generation: a k-means library of the 16 x 4 validation slots, 16 new images.
    assert results["composition/num_clusters"] == 24 and results["composition/num_images"] == 16
    with np.load(workdir / "compositions.npz") as data:
        assert data["images"].shape == (16, 35, 35, 3) and data["slots"].shape == (16, 4, 16)
    assert SlotLibrary.load(workdir / "slot_library.npz", slot_size=16).slots.shape == (16, 4, 16)
    assert results["fid/skipped"].startswith("skipped: Inception weights") and "not found" in results["fid/skipped"]

    # Evaluation alone restores the latest checkpoint and gives the same numbers.
    os.remove(workdir / "eval_results.json")
    result = subprocess.run([sys.executable, "-m", "slot_jax.main", "--mode=eval",
                             *tiny_args(workdir, **{"train.num_steps": final})],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    again = json.loads((workdir / "eval_results.json").read_text())
    assert again["val/decoder/fg_ari"] == pytest.approx(results["val/decoder/fg_ari"], abs=1e-6)
    assert again["composition/inertia"] == pytest.approx(results["composition/inertia"], rel=1e-5)


@pytest.fixture
def trained_workdir(tmp_path, tiny_args, capsys):
    workdir = tmp_path / "trained"
    code, err = _run_cli(tiny_args(workdir, **{"train.num_steps": 2, "train.eval_every": 1000}), capsys)
    assert code == 0, err
    return workdir


def test_evaluation_scores_fid_and_kid_when_weights_are_present(trained_workdir, tiny_args, capsys, monkeypatch):
    weights = save_inception_pth(random_inception_variables(), trained_workdir / "weights.pth")
    monkeypatch.setenv("SLOT_JAX_INCEPTION_WEIGHTS", str(weights))
    code, err = _run_cli(["--mode=eval", *tiny_args(trained_workdir, **{"eval.fid_batch_size": 8})], capsys)
    assert code == 0, err
    results = json.loads((trained_workdir / "eval_results.json").read_text())
    assert "fid/skipped" not in results and results["fid/mode"] == "clean" and results["fid/num_real"] == 16
    for name in ("reconstruction", "composition"):
        assert np.isfinite(results[f"fid/{name}"]) and results[f"fid/{name}"] >= 0
        assert np.isfinite(results[f"kid/{name}"])
    assert (trained_workdir / "fid_stats" / "tetrominoes_val_clean_35x35_16.npz").is_file()


def test_missing_configured_weights_are_refused_before_training(tmp_path, tiny_args, capsys):
    code, err = _run_cli(tiny_args(tmp_path / "run", **{"eval.fid_weights": str(tmp_path / "nope.pth")}), capsys)
    assert code == 2 and err.count("\n") == 1 and "nope.pth" in err and "not found" in err
    assert not (tmp_path / "run").exists()


def test_checkpoint_from_another_config_is_refused_and_kept(trained_workdir, tiny_args, capsys):
    before = _snapshot(trained_workdir / "checkpoints")
    code, err = _run_cli(tiny_args(trained_workdir, **{"train.num_steps": 4, "model.num_slots": 3}), capsys)
    assert code == 2
    assert err.count("\n") == 1 and "different config" in err and "num_slots" in err and "--workdir" in err
    assert _snapshot(trained_workdir / "checkpoints") == before


def test_nan_loss_stops_with_an_error_and_saves_nothing(trained_workdir, tiny_args, capsys):
    before = _snapshot(trained_workdir / "checkpoints")
    results_before = (trained_workdir / "eval_results.json").read_text()
    code, err = _run_cli(tiny_args(trained_workdir, **{"train.num_steps": 8, "train.learning_rate": 1e12,
                                                       "train.checkpoint_every": 2}), capsys)
    assert code == 2 and err.count("\n") == 1 and "NaN" in err and "learning_rate" in err
    assert _snapshot(trained_workdir / "checkpoints") == before
    assert (trained_workdir / "eval_results.json").read_text() == results_before


def test_bad_workdirs_and_overrides_are_one_line_errors(tmp_path, tiny_args, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cases = [
        (tiny_args(blocker / "run"), "cannot create workdir"),
        (tiny_args(blocker), "is not a directory"),
        (tiny_args(tmp_path / "never_trained") + ["--mode=eval"], "does not exist"),
        (tiny_args(tmp_path / "w", **{"train.num_steps": "ten"}), "expected an integer"),
        (tiny_args(tmp_path / "w", **{"train.num_stepz": "10"}), "unknown config key"),
        (tiny_args(tmp_path / "w", **{"data.global_batch_size": "6"}), "multiple of the 4 devices"),
        (tiny_args(tmp_path / "w", **{"data.name": "clevr"}), "config.data.name"),
        (tiny_args(tmp_path / "w", **{"model.decoder.strides": "(2, 1)"}), "broadcast_size"),
        (tiny_args(tmp_path / "w", **{"model.compute_dtype": "float16"}), "config.model.compute_dtype"),
    ]
    for args, message in cases:
        code, err = _run_cli(args, capsys)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "w").exists(), "a refused config must not create its workdir"


def test_corrupt_checkpoint_is_a_one_line_error(trained_workdir, tiny_args, capsys):
    latest = max((p for p in (trained_workdir / "checkpoints").iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
    for file in (latest / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[:7])  # truncated
    code, err = _run_cli(tiny_args(trained_workdir, **{"train.num_steps": 2}) + ["--mode=eval"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert str(latest) in err and ("cannot be read" in err or "does not fit" in err)


def test_a_failing_rerun_keeps_config_json(trained_workdir, tiny_args, capsys):
    before = (trained_workdir / "config.json").read_text()
    code, _ = _run_cli(tiny_args(trained_workdir, **{"train.num_steps": 8, "train.learning_rate": 1e12}), capsys)
    assert code == 2
    assert (trained_workdir / "config.json").read_text() == before


def test_plateau_schedule_cuts_the_learning_rate_after_bad_evaluations_and_resumes(tmp_path, tiny_args, capsys):
    workdir = tmp_path / "plateau"
    # threshold 1 means no evaluation ever counts as an improvement; patience 0 cuts at once.
    settings = {"train.schedule": "plateau", "train.learning_rate": 1e-3, "train.eval_every": 2,
                "train.plateau_patience": 0, "train.plateau_threshold": 1.0, "train.checkpoint_every": 2,
                "train.min_learning_rate": 1e-6}
    code, err = _run_cli(tiny_args(workdir, **{**settings, "train.num_steps": 4}), capsys)
    assert code == 0, err
    code, err = _run_cli(tiny_args(workdir, **{**settings, "train.num_steps": 8}), capsys)  # resumes at 4
    assert code == 0, err
    rates = {r["step"]: r["learning_rate"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
             if "learning_rate" in r}
    # logged before each step's evaluation: 1e-3, then x0.1 per evaluation, floored at 1e-6
    assert rates[2] == pytest.approx(1e-3) and rates[4] == pytest.approx(1e-4)
    assert rates[6] == pytest.approx(1e-5) and rates[8] == pytest.approx(1e-6)


def test_ctrl_c_saves_the_step_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_args, capsys,
                                                                                 monkeypatch):
    # Stopping at an evaluation step: the plateau schedule (cutting at every evaluation) must see it.
    settings = {"train.schedule": "plateau", "train.learning_rate": 1e-3, "train.eval_every": 2,
                "train.plateau_patience": 0, "train.plateau_threshold": 1.0, "train.checkpoint_every": 1000,
                "train.min_learning_rate": 1e-6, "train.log_every": 1}
    whole = tmp_path / "whole"
    code, err = _run_cli(tiny_args(whole, **settings, **{"train.num_steps": 6}), capsys)
    assert code == 0, err

    from slot_jax.training import loop
    log_window = loop.log_window

    def press_ctrl_c_at_step_3(experiment, state, step, *args):
        log_window(experiment, state, step, *args)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "log_window", press_ctrl_c_at_step_3)
    stopped = tmp_path / "stopped"
    code, err = _run_cli(tiny_args(stopped, **settings, **{"train.num_steps": 6}), capsys)
    assert code == 130
    assert err.splitlines()[-1] == (f"stopped by SIGINT after step 4: checkpoint saved in {stopped.absolute()}"
                                    "/checkpoints/4; rerun the same command to resume")
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    assert not (stopped / "eval_results.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop gave Ctrl-C back

    monkeypatch.setattr(loop, "log_window", log_window)
    code, err = _run_cli(tiny_args(stopped, **settings, **{"train.num_steps": 6}), capsys)
    assert code == 0, err
    records = lambda workdir: {(r["step"], key): value for r in map(json.loads, (workdir / "metrics.jsonl").open())
                               for key, value in r.items() if key in ("loss", "learning_rate", "val/loss")}
    resumed, uninterrupted = records(stopped), records(whole)
    assert resumed.keys() == uninterrupted.keys()
    np.testing.assert_allclose([resumed[k] for k in sorted(resumed)], [uninterrupted[k] for k in sorted(resumed)],
                               rtol=1e-6)
    assert resumed[(6, "learning_rate")] == pytest.approx(1e-5)  # cut at steps 2 and 4 (the stop) already
