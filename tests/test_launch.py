"""launch/slurm.sh with stand-ins for srun, scontrol and Python: the arguments reach slot_jax, and
only a run stopped before the time limit (status 143) is requeued."""
import os
import subprocess

import pytest

from conftest import REPO

SCRIPT = REPO / "launch" / "slurm.sh"


def _stand_ins(tmp_path, python_status: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "srun": 'exec "$@"',
        "scontrol": f'echo "$@" >> {tmp_path}/scontrol.txt',
        "fake_python": f'echo "SLOT_JAX_DISTRIBUTED=$SLOT_JAX_DISTRIBUTED $*" >> {tmp_path}/python.txt; exit {python_status}',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
            "SLOT_JAX_PYTHON": str(bin_dir / "fake_python")}


@pytest.mark.parametrize("python_status, requeued", [(143, True), (0, False), (2, False), (1, False)])
def test_only_a_run_stopped_for_the_time_limit_is_requeued(tmp_path, python_status, requeued):
    env = _stand_ins(tmp_path, python_status)
    args = ["--config=configs/diffusion.py", "--workdir=/shared/run", "--config.train.num_steps=10"]
    result = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == python_status, result.stderr
    assert (tmp_path / "python.txt").read_text() == f"SLOT_JAX_DISTRIBUTED=1 -m slot_jax.main {' '.join(args)}\n"
    scontrol = tmp_path / "scontrol.txt"
    assert (scontrol.read_text() == "requeue 4242\n") if requeued else not scontrol.exists()


def test_without_arguments_it_prints_its_usage(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], env=_stand_ins(tmp_path, 0), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: sbatch")
    assert not (tmp_path / "python.txt").exists()


def test_the_time_limit_signal_leaves_time_to_save():
    directives = [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=TERM@300" in directives and "#SBATCH --requeue" in directives
