"""Test-wide set-up: four simulated CPU devices, so data-parallel code runs for real."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

SHARED_REAL = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture
def real_data_dir():
    if not SHARED_REAL.exists():
        pytest.skip(f"real samples not found at {SHARED_REAL}")
    return SHARED_REAL


REPO = pathlib.Path(__file__).resolve().parents[1]
SA_CONFIG = REPO / "configs" / "slot_attention.py"

# Shrinks configs/slot_attention.py:quick so a step compiles and runs in well under a second.
TINY_OVERRIDES = {
    "data.global_batch_size": "8", "model.slot_size": "16", "model.mlp_hidden": "16",
    "model.encoder.channels": "(8, 8, 8, 8)", "model.encoder.mlp_features": "(16, 16)",
    "model.decoder.channels": "(8, 8)", "train.warmup_steps": "1", "eval.batch_size": "8",
    "eval.num_examples": "16", "eval.num_figure_rows": "4", "train.log_every": "2",
}


@pytest.fixture
def tiny_args():
    """Command-line arguments for a tiny quick-config run, given a workdir."""
    def build(workdir, **overrides):
        merged = {**TINY_OVERRIDES, **{k: str(v) for k, v in overrides.items()}}
        return [f"--config={SA_CONFIG}:quick", f"--workdir={workdir}"] + [
            f"--config.{k}={v}" for k, v in merged.items()]
    return build
