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
