"""The benchmark drivers' decisions that need no timing: which PyTorch dtypes a CPU can time."""
import pathlib
import sys

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
