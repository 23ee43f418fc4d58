"""The XLA flag that gives convolutions back to Eigen: added only where XLA knows it, never over
the user's own choice, and in effect in a fresh process."""
import os
import subprocess
import sys

import pytest

from slot_jax import xla_cpu


@pytest.mark.parametrize("version,known", [
    ("0.8.0", False), ("0.8.3", True), ("0.9.0.1", True), ("0.10.2", True), ("0.10.2.dev20261101", True),
    ("0.11.0", False), ("0.4.38", False)])
def test_flag_is_added_only_for_jaxlib_releases_that_know_it(version, known):
    assert xla_cpu.flag_is_known(version) is known


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
    monkeypatch.setattr(xla_cpu.importlib.metadata, "version", lambda name: "0.10.2")
    return monkeypatch


def test_adds_the_flag_after_the_users_flags_once(env):
    env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert xla_cpu.prefer_eigen_convolutions() is True
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {xla_cpu.FLAG}"
    assert xla_cpu.prefer_eigen_convolutions() is True
    assert os.environ["XLA_FLAGS"].count(xla_cpu.FLAG_NAME) == 1
    assert xla_cpu.eigen_convolutions()


def test_keeps_the_users_own_setting_of_the_flag(env):
    own = f"--{xla_cpu.FLAG_NAME}=individual_convolution,individual_dot"
    env.setenv("XLA_FLAGS", own)
    assert xla_cpu.prefer_eigen_convolutions() is False
    assert os.environ["XLA_FLAGS"] == own


@pytest.mark.parametrize("opt_out", ["1", "yes"])
def test_opt_out_keeps_xla_flags_untouched(env, opt_out):
    env.setenv("XLA_FLAGS", "")
    env.setenv(xla_cpu.OPT_OUT, opt_out)
    assert xla_cpu.prefer_eigen_convolutions() is False
    assert os.environ["XLA_FLAGS"] == ""


def test_unknown_jaxlib_release_is_left_alone(env):
    env.setattr(xla_cpu.importlib.metadata, "version", lambda name: "0.12.0")
    env.setenv("XLA_FLAGS", "")
    assert xla_cpu.prefer_eigen_convolutions() is False
    assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.parametrize("xla_flags,eigen", [
    ("", False),
    ("--xla_force_host_platform_device_count=4", False),
    (f"--{xla_cpu.FLAG_NAME}=-individual_convolution", True),
    (f"--{xla_cpu.FLAG_NAME}=-individual_dot,-individual_convolution", True),
    (f"--{xla_cpu.FLAG_NAME}=-individual_dot", False),
    (f"--{xla_cpu.FLAG_NAME}=individual_dot", True),          # a whole list without convolutions
    (f"--{xla_cpu.FLAG_NAME}=individual_dot,individual_convolution", False),
    (f"--{xla_cpu.FLAG_NAME}=-individual_convolution --{xla_cpu.FLAG_NAME}=+individual_convolution", False),
])
def test_reads_whether_convolutions_left_ynnpack_from_any_form_of_the_flag(monkeypatch, xla_flags, eigen):
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    assert xla_cpu.eigen_convolutions() is eigen


CHILD = """
import re, jax, jax.numpy as jnp
import slot_jax
from jax import lax
x, w = jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32))  # YNNPACK skips tinier ones
conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(x, w).compile().as_text()
print("ynn_conv" if re.search(r"ynn_fusion[^\\n]*conv", hlo) else "eigen_conv", float(conv(x, w).sum()))
"""


def run_child(**env_vars):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **env_vars}
    if xla_cpu.OPT_OUT not in env_vars:
        env.pop(xla_cpu.OPT_OUT, None)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    kind, total = out.stdout.split()
    # 2 images x 32 outputs x 32 inputs of ones x (36 interior pixels of 9 taps, 24 edge of 6, 4 corner of 4)
    assert float(total) == 2 * 32 * 32 * (36 * 9 + 24 * 6 + 4 * 4)
    return kind


needs_known_flag = pytest.mark.skipif(
    not xla_cpu.flag_is_known(xla_cpu.importlib.metadata.version("jaxlib")),
    reason="this jaxlib's XLA does not know the flag, so slot_jax does not set it")


@needs_known_flag
def test_a_fresh_process_runs_its_convolutions_outside_ynnpack():
    assert run_child() == "eigen_conv"


@needs_known_flag
def test_opting_out_leaves_convolutions_to_xlas_default():
    kind = run_child(**{xla_cpu.OPT_OUT: "1"})
    if kind == "eigen_conv":
        pytest.skip("this jaxlib keeps convolutions out of YNNPACK by default: the flag changes nothing")
    assert kind == "ynn_conv"
