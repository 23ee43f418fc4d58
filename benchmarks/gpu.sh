#!/usr/bin/env bash
# The GPU benchmark of issues #3 and #5, for a machine with one NVIDIA GPU, run from the repo root:
#
#     bash benchmarks/gpu.sh [RESULTS_DIR]        # default RESULTS_DIR: benchmarks/results
#
# 1. The Slot Attention train step on the report's config (128x128, 11 slots, 64 channels) at
#    batch 32 and 64, in float32 and with bfloat16 convolutions (model.compute_dtype), slot_jax
#    against the PyTorch eager twin on the same card, alternating, each in its own process.
# 2. The diffusion UNet train step (report UNet, 32x32x3 latents) at batch 32 and 64, float32.
# 3. Sampling speed of the report UNet: DDIM with 50 and 25 steps.
#
# Each part prints a table and appends a JSON line with the device name to RESULTS_DIR/*.jsonl
# (on a GPU the "peak_rss_mb" fields hold the GPU's peak allocation). Both frameworks keep their
# default float32 precision: XLA and cuDNN convolutions may use TF32 in both, while PyTorch's
# float32 matmuls (and so its float32 matmul peak) do not.
# Needs python3 with CUDA builds of jax and torch, flax, optax and orbax-checkpoint. Wheels in
# .whl/ (ml-collections, which the device image lacks) are installed into /tmp/site first; slot_jax
# itself runs from this checkout. Each part has its own time limit, so the whole script ends
# within about 9 minutes even if a part hangs; a part cut short prints what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu_device.txt"
python3 - <<'EOF' || exit 1
import jax, torch, flax, optax, ml_collections
import slot_jax  # noqa: F401  (from this checkout)
print(f"jax {jax.__version__} on {jax.devices()}, flax {flax.__version__}, optax {optax.__version__}, "
      f"torch {torch.__version__} cuda={torch.cuda.is_available()}")
assert jax.default_backend() == "gpu", "JAX does not see the GPU"
EOF

started=$SECONDS
echo "== 1/3 Slot Attention train step (report128, batch 32 and 64, float32 and bf16)"
timeout 330 python3 benchmarks/train_throughput.py --models report128 --batches 32,64 \
    --dtypes float32,bfloat16 --jax_variants auto/auto --rounds 1 --steps 10 --warmup 3 \
    --results "$RESULTS/train_throughput.jsonl" 2>&1 | grep -v "^WARNING\|UserWarning\|warnings.warn"
echo "   part 1 took $((SECONDS - started)) s"

started=$SECONDS
echo "== 2/3 diffusion UNet train step (report UNet, batch 32 and 64)"
timeout 150 python3 benchmarks/diffusion_speed.py --part train --unets report --batches 32,64 \
    --jax_variants auto --rounds 1 --steps 10 --warmup 3 --no_compile_cache \
    --results "$RESULTS/diffusion_speed.jsonl" 2>&1 | grep -v "^WARNING\|UserWarning\|warnings.warn"
echo "   part 2 took $((SECONDS - started)) s"

started=$SECONDS
echo "== 3/3 sampling (report UNet, DDIM 50 and 25 steps, batch 8)"
timeout 60 python3 benchmarks/diffusion_speed.py --part sampling \
    --sample_runs report:ddim:50,report:ddim:25 --sample_batch 8 --sample_warmup_below 1000 \
    --results "$RESULTS/diffusion_speed.jsonl" 2>&1 | grep -v "^WARNING\|UserWarning\|warnings.warn"
echo "   part 3 took $((SECONDS - started)) s"
