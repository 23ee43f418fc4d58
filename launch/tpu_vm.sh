#!/usr/bin/env bash
# Runs slot_jax on every worker of a Cloud TPU VM slice (one process per host).
#
#   launch/tpu_vm.sh TPU_NAME ZONE "--config=configs/diffusion.py --workdir=/mnt/shared/run"
#   launch/tpu_vm.sh TPU_NAME ZONE "--config=configs/slot_attention.py:scenes --workdir=/mnt/shared/sa"
#
# Each host installs the checked-out code and starts the same command; jax.distributed picks up the
# slice's topology, the global batch is split across hosts by slot_jax's input pipeline, and the
# train step is one jax.jit over all chips of the slice. The workdir must be a filesystem path that
# every host sees (an NFS share or a gcsfuse-mounted bucket): gs:// URLs are not supported yet.
# A preempted (spot) slice gets SIGTERM: every host saves the same step and exits with status 143;
# the same command on the recreated slice resumes there.
set -euo pipefail
TPU_NAME=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE "ARGS"}
ZONE=${2:?usage: launch/tpu_vm.sh TPU_NAME ZONE "ARGS"}
ARGS=${3:?usage: launch/tpu_vm.sh TPU_NAME ZONE "ARGS"}
REPO_DIR=${REPO_DIR:-slot_jax}

gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all \
  "$(git rev-parse --show-toplevel)" "$TPU_NAME:~/$REPO_DIR"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  cd ~/$REPO_DIR
  python3 -m pip install -q 'jax[tpu]' -e .
  SLOT_JAX_DISTRIBUTED=1 python3 -m slot_jax.main $ARGS
"
