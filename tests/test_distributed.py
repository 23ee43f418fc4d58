"""Multi-process runs: two processes of two CPU devices each train, checkpoint, resume and
evaluate as one run, and match one process of four devices; bad addresses fail in one line."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from slot_jax import distributed
from slot_jax import main as cli
from slot_jax.errors import UserError

# Few evaluation images and compositions: the test is about the processes, not the metrics.
SMALL_EVAL = {"eval.num_examples": 8, "eval.num_compositions": 8, "eval.num_figure_rows": 2,
              "train.checkpoint_every": 2, "train.eval_every": 1000}


def _free_port() -> int:
    """A free port below Linux's ephemeral range (32768 up), which outgoing connections never take."""
    for port in random.Random().sample(range(20000, 32000), 50):
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..32000")


def _start_two_processes(args, tmp_path, workdirs=None):
    """The command as processes 0 and 1 of two CPU devices each (with `workdirs[i]` as process
    i's --workdir if given), writing to tmp_path/process_{i}.txt."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags + ["--xla_force_host_platform_device_count=2"]),
           "HOME": str(tmp_path / "home"), "SLOT_JAX_INCEPTION_WEIGHTS": ""}
    address = f"localhost:{_free_port()}"
    processes = []
    for i in (0, 1):
        with open(tmp_path / f"process_{i}.txt", "w") as output:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "slot_jax.main", *args, f"--coordinator_address={address}",
                 "--num_processes=2", f"--process_id={i}", *([f"--workdir={workdirs[i]}"] if workdirs else [])],
                env=env, text=True, stdout=output, stderr=subprocess.STDOUT))
    return processes


def _finish(processes, tmp_path, expect_code=0, timeout=600):
    """Waits for the processes (killing them if they outlive the timeout); returns their outputs."""
    try:
        for process in processes:
            process.wait(timeout=timeout)
    finally:
        for process in processes:
            process.kill()
    outputs = [(tmp_path / f"process_{i}.txt").read_text() for i in (0, 1)]
    for process, output in zip(processes, outputs):
        assert process.returncode == expect_code, output[-3000:]
    return outputs


def _run_two_processes(args, tmp_path, workdirs=None, expect_code=0, timeout=600):
    return _finish(_start_two_processes(args, tmp_path, workdirs), tmp_path, expect_code, timeout)


def _losses(workdir):
    return {m["step"]: m["loss"] for m in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def test_two_processes_train_resume_and_match_one(tmp_path, tiny_args):
    two = tmp_path / "two_processes"
    first = _run_two_processes(tiny_args(two, **SMALL_EVAL, **{"train.num_steps": 4}), tmp_path)
    assert "trained steps 0..4" in first[0] and "trained steps" not in first[1]  # process 0 reports
    resumed = _run_two_processes(tiny_args(two, **SMALL_EVAL, **{"train.num_steps": 6}), tmp_path)
    assert "trained steps 4..6" in resumed[0]
    assert sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6

    one = tmp_path / "one_process"  # this process: four devices (conftest)
    assert cli.main(tiny_args(one, **SMALL_EVAL, **{"train.num_steps": 6})) == 0
    # The same global batches over the same four devices, the gradients averaged across processes.
    two_losses, one_losses = _losses(two), _losses(one)
    assert sorted(two_losses) == sorted(one_losses) == [2, 4, 6]
    np.testing.assert_allclose([two_losses[s] for s in (2, 4, 6)], [one_losses[s] for s in (2, 4, 6)], rtol=1e-5)
    two_results = json.loads((two / "eval_results.json").read_text())
    one_results = json.loads((one / "eval_results.json").read_text())
    assert two_results["step"] == 6 and two_results["val/num_images"] == one_results["val/num_images"] == 8
    np.testing.assert_allclose(two_results["val/loss"], one_results["val/loss"], rtol=1e-5)
    # The all-reduce sums in another order, so a few of the 8 x 35 x 35 pixels may change slot.
    for key in ("val/decoder/ari", "val/decoder/fg_ari", "val/attention/fg_ari"):
        np.testing.assert_allclose(two_results[key], one_results[key], atol=5e-3, err_msg=key)
    assert (two / "figures" / "val_reconstructions.png").stat().st_size > 0


def test_processes_with_different_workdirs_stop_before_writing(tmp_path, tiny_args):
    workdirs = [tmp_path / "host0" / "run", tmp_path / "host1" / "run"]
    args = tiny_args(workdirs[0], **{"train.num_steps": 2, "eval.num_examples": 8, "eval.num_compositions": 8})
    # Without the check they would hang in their first checkpoint, each waiting for the other's part.
    outputs = _run_two_processes(args, tmp_path, workdirs=workdirs, expect_code=2, timeout=180)
    for workdir, output in zip(workdirs, outputs):
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == [f"error: process(es) 1 cannot see workdir {workdir} as process 0 writes it: give "
                          "every process the same --workdir, on a filesystem all hosts share"], output[-2000:]
    assert not workdirs[0].exists() and not workdirs[1].exists()  # created for the check, removed


def test_a_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path, tiny_args):
    workdir = tmp_path / "run"
    args = tiny_args(workdir, **{**SMALL_EVAL, "train.num_steps": 1000, "train.checkpoint_every": 1000,
                                 "train.log_every": 1})
    processes = _start_two_processes(args, tmp_path)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in processes), \
            (tmp_path / "process_0.txt").read_text()[-3000:]
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)  # a preemption notice to one host of the slice
    outputs = _finish(processes, tmp_path, expect_code=143, timeout=180)
    stops = [re.findall(r"stopped by a preemption notice \(SIGTERM\) to a process of this run after step (\d+): "
                        r"checkpoint saved in (\S+); rerun the same command to resume", output) for output in outputs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, outputs[0][-2000:] + outputs[1][-2000:]
    step, checkpoint = int(stops[0][0][0]), stops[0][0][1]
    assert checkpoint == str(workdir.absolute() / "checkpoints" / str(step))
    assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == [str(step)]
    assert max(_losses(workdir)) == step < 1000


@pytest.mark.parametrize("address", ["localhost", "localhost:", ":1234", "localhost:http", "localhost:70000"])
def test_bad_coordinator_address(address):
    with pytest.raises(UserError, match="is not HOST:PORT"):
        distributed.split_address(address)


def test_ipv6_address_splits():
    assert distributed.split_address("[::1]:1234") == ("::1", 1234)


def test_busy_port_and_silent_coordinator_are_one_line_errors(monkeypatch):
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on port {port}.*choose another port"):
            distributed.check_port_free(port)
    port = _free_port()  # nobody listens here
    with pytest.raises(UserError, match=f"did not answer at localhost:{port} within 1 s.*--process_id=0"):
        distributed.wait_for_coordinator("localhost", port, 1.0)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match="not a number of seconds"):
        distributed.timeout_s()


@pytest.mark.parametrize("flags, message", [
    (["--num_processes=2", "--process_id=1"], "--num_processes needs --coordinator_address too"),
    (["--coordinator_address=h:1", "--process_id=0"], "needs --num_processes too"),
    (["--coordinator_address=h:1", "--num_processes=2", "--process_id=2"], "--process_id must be in 0..1"),
    (["--coordinator_address=h:1", "--num_processes=0", "--process_id=0"], "--num_processes must be at least 1"),
])
def test_incomplete_process_flags_exit_2(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config=configs/slot_attention.py:quick", f"--workdir={tmp_path / 'run'}", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
