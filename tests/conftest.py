"""Test-wide set-up: four simulated CPU devices, so data-parallel code runs for real."""
import contextlib
import os

# Must happen before jax is imported anywhere. The suite is bound by XLA compiling hundreds of
# small programs it runs once or twice, so tests compile without LLVM's optimisations: the whole
# suite took 10 min 55 s instead of 22 min 26 s on a 2-core AMD EPYC. The programs compute the same
# operations; runs and benchmarks keep XLA's default.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same programs again (every tiny CLI run of a config, resumed runs, eval
# mode), so each test process keeps XLA's executables in a persistent cache of its own for the
# session: a program compiled once is loaded afterwards.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="slot_jax_test_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import pathlib
import signal

import pytest

# A suite started in the background by a shell (`nohup ... &`) inherits Ctrl-C ignored, which the
# stop handlers rightly leave alone; the tests of Ctrl-C need it as a foreground process has it
# (and processes they start inherit it, since a handler, unlike "ignored", is reset at exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from slot_jax import onednn

# Tests of slot_jax's oneDNN calls skip where this jaxlib cannot run them.
needs_onednn = pytest.mark.skipif(not onednn.available(), reason=(
    "XLA:CPU's oneDNN convolution is not usable in this jaxlib (its probe failed, or SLOT_JAX_ONEDNN=0)"))
needs_onednn_bf16 = pytest.mark.skipif(not onednn.available("bfloat16"), reason=(
    "XLA:CPU's oneDNN convolution is not usable on bfloat16 here (its bfloat16 probe failed, or SLOT_JAX_ONEDNN=0)"))

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
    "eval.num_compositions": "16", "eval.kmeans_restarts": "1",
}


@pytest.fixture
def tiny_args():
    """Command-line arguments for a tiny quick-config run, given a workdir."""
    def build(workdir, **overrides):
        merged = {**TINY_OVERRIDES, **{k: str(v) for k, v in overrides.items()}}
        return [f"--config={SA_CONFIG}:quick", f"--workdir={workdir}"] + [
            f"--config.{k}={v}" for k, v in merged.items()]
    return build


@contextlib.contextmanager
def held_by_another_process(workdir):
    """Another process holds `workdir` (slot_jax.training.workdir_lock) until the block ends;
    yields that process."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import time
        from slot_jax.training.workdir_lock import hold_workdir
        with hold_workdir({str(workdir)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def random_inception_variables(seed: int = 0):
    """FID Inception variables of the real layout with random values (no compile, no download)."""
    import jax.numpy as jnp
    import numpy as np

    from slot_jax.evaluation import inception

    rng = np.random.default_rng(seed)

    def fill(path, shape):
        leaf = path[-1].key
        if leaf == "kernel":
            return jnp.asarray(rng.normal(0, (2.0 / np.prod(shape[:3])) ** 0.5, shape), jnp.float32)
        if leaf in ("scale", "var"):
            return jnp.asarray(0.5 + rng.random(shape), jnp.float32)
        return jnp.asarray(0.1 * rng.normal(size=shape), jnp.float32)  # bias, mean

    import jax
    return jax.tree_util.tree_map_with_path(fill, inception._expected_variables(),
                                            is_leaf=lambda x: isinstance(x, tuple))


def save_inception_pth(variables, path):
    """Writes `variables` as a pytorch-fid style state dict (needs torch; skips without it)."""
    import numpy as np
    torch = pytest.importorskip("torch", reason="torch not installed: it writes the .pth test weights")
    names = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
             ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
    state = {}

    def walk(tree, collection, prefix):
        for key, value in tree.items():
            if hasattr(value, "items"):
                walk(value, collection, prefix + (key,))
            else:
                array = np.asarray(value)
                if key == "kernel":
                    array = array.transpose(3, 2, 0, 1)
                state[".".join(prefix + (names[(collection, key)],))] = torch.from_numpy(array.copy())

    for collection in ("params", "batch_stats"):
        walk(variables[collection], collection, ())
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, path)
    return path
