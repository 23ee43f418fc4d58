#!/usr/bin/env bash
# Runs slot_jax under SLURM, one process per task, and keeps it going across the time limit.
#
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-task=4 --time=04:00:00 \
#       launch/slurm.sh --config=configs/diffusion.py --workdir=/shared/runs/report
#
# 300 s before the time limit SLURM sends SIGTERM to the tasks (--signal below): every process
# finishes the same step, saves it and exits with status 143. The job then requeues itself and
# the rerun resumes from that checkpoint, until the run has finished (status 0). Any other status
# (a crash, or 2 for bad input) ends the job without a requeue. The workdir must be on a
# filesystem that every node sees. $SLOT_JAX_PYTHON names the interpreter (default python3).
#SBATCH --job-name=slot_jax
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slot_jax-%j.out
set -uo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: sbatch [options] launch/slurm.sh --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
# JAX reads the process count, index and coordinator from SLURM's environment.
SLOT_JAX_DISTRIBUTED=1 srun "${SLOT_JAX_PYTHON:-python3}" -m slot_jax.main "$@"
status=$?
if [ "$status" -eq 143 ]; then
  echo "slot_jax: stopped before the time limit with its step saved; requeueing job ${SLURM_JOB_ID}" >&2
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"
