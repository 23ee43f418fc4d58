"""The benchmark drivers' decisions that need no timing: which PyTorch dtypes a CPU can time,
that a baseline computes what slot_jax does, and that the allocator benchmark's settings are
the command line's own."""
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_throughput  # noqa: E402

AVX2 = {"model": "AMD EPYC", "vector_isa": ["avx2", "fma"]}
AVX512_BF16 = {"model": "Intel Xeon", "vector_isa": ["avx2", "fma", "avx512f", "avx512_bf16"]}


def test_pytorch_bf16_skipped_on_a_cpu_without_native_bf16_with_the_reason():
    reason = train_throughput.torch_bf16_skip_reason("cpu", AVX2)
    assert reason and "AMD EPYC" in reason and "avx512_bf16" in reason


def test_pytorch_bf16_timed_on_avx512_bf16_cpus_and_gpus():
    assert train_throughput.torch_bf16_skip_reason("cpu", AVX512_BF16) is None
    assert train_throughput.torch_bf16_skip_reason("gpu", AVX2) is None


def test_fid_distance_baselines_compute_the_same_distances(tmp_path, monkeypatch):
    import json

    import fid_distances

    monkeypatch.setattr(fid_distances, "RESULTS", tmp_path / "distances.jsonl")
    assert fid_distances.main(["--features", "24", "--images", "10,200", "--kid_images", "30",
                               "--repeats", "1"]) == 0
    rows = json.loads((tmp_path / "distances.jsonl").read_text())["rows"]
    assert [(row["distance"], row["images"]) for row in rows] == [("Frechet", 10), ("Frechet", 200), ("KID", 30)]
    for row in rows:
        assert row["baseline_value"] != 0 and row["rel_diff"] < 1e-6 and row["speed_up"] > 0  # KID may be < 0


def test_the_allocator_benchmark_times_the_command_lines_own_settings(monkeypatch):
    import host_memory as benchmark

    from slot_jax import host_memory
    monkeypatch.setattr(host_memory, "find_allocator", {"jemalloc": "libjemalloc.so.2"}.get)
    settings = benchmark.settings()
    assert settings["jemalloc"] == {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": host_memory.JEMALLOC_CONF}
    assert settings["hugetlb"] == {"GLIBC_TUNABLES": host_memory.TUNABLE}
    assert settings["tcmalloc"] == {"LD_PRELOAD": ""}  # not installed: the driver refuses the setting
    assert "oversize_threshold" not in settings["jemalloc_thp"]["MALLOC_CONF"]


def test_the_diffusion_benchmark_variants_set_dtype_and_dense_precision(monkeypatch):
    import diffusion_speed

    from slot_jax.models import dense
    monkeypatch.setattr(dense, "LOW_PRECISION_DENSE", True)  # restored after the test
    for variant, dtype, low_dense in (("auto", "float32", True), ("auto+bf16", "bfloat16", True),
                                      ("auto+bf16+f32_dense", "bfloat16", False)):
        config = diffusion_speed.diffusion_config("quick", variant)
        assert (config.model.compute_dtype, config.model.unet.conv_impl) == (dtype, "auto")
        diffusion_speed.build_config_unet(config, variant)
        assert dense.LOW_PRECISION_DENSE is low_dense


def test_the_fgari_benchmark_starts_with_the_command_lines_allocator(tmp_path):
    """It re-runs itself as `python -m slot_jax.main` does, so an unknown SLOT_JAX_ALLOCATOR is the
    command line's one-line error before any work (before the config, whose variant is unknown)."""
    import os
    import subprocess

    env = {**os.environ, "SLOT_JAX_ALLOCATOR": "bogus"}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tetrominoes_fgari.py"), "--workdir", str(tmp_path),
                          "--variant", "no_such_variant"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: SLOT_JAX_ALLOCATOR='bogus' is not an allocator choice: use one of auto, jemalloc, tcmalloc, "
        "hugepages, off (or unset it for auto)"]


def test_the_fgari_benchmark_stops_with_one_line_and_records_nothing(tmp_path, monkeypatch, capsys):
    import tetrominoes_fgari

    from slot_jax.training import loop
    from slot_jax.training.stopping import Stopped

    def stopped(config, workdir):
        raise Stopped(300, "SIGTERM", pathlib.Path(workdir) / "checkpoints" / "300", 143)

    monkeypatch.setattr(loop, "train", stopped)
    monkeypatch.setattr(tetrominoes_fgari, "RESULTS", tmp_path / "fgari.jsonl")
    assert tetrominoes_fgari.main(["--workdir", str(tmp_path / "run"), "--steps", "600"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stopped by SIGTERM after step 300") and "resume" in err[0]
    assert not (tmp_path / "fgari.jsonl").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="slot_jax picks allocators on Linux only")
def test_the_drivers_say_when_their_workers_would_run_on_jemallocs_defaults(monkeypatch, capsys):
    from slot_jax import host_memory
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    monkeypatch.delenv(host_memory.ALLOCATOR, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    train_throughput.allocator_note()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "without MALLOC_CONF" in out
    monkeypatch.setenv("MALLOC_CONF", host_memory.JEMALLOC_CONF)  # as the command line sets it
    train_throughput.allocator_note()
    assert capsys.readouterr().out == ""
