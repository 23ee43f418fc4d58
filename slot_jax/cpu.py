"""What CPU this process runs on: its model name and the vector instruction sets that decide which
convolution kernels are fast (or exist at all: oneDNN has no bfloat16 convolution without
AVX512_BF16 or AMX). Benchmarks record it beside their timings, and oneDNN's probe verdicts are
cached per CPU, since a home directory can move to a machine of another kind."""
import functools
import pathlib
import platform

# The instruction sets the CPU code paths care about, in /proc/cpuinfo's spelling.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve",
                "bf16")


def parse_cpuinfo(text: str) -> dict:
    """{"model": name, "vector_isa": [flags among VECTOR_FLAGS]} from /proc/cpuinfo's text (its
    first processor; x86 names it "model name", ARM lists "Features" and may name no model)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        if not line.strip() and (model or flags):
            break  # the end of the first processor's block
    return {"model": model or platform.machine(), "vector_isa": [f for f in VECTOR_FLAGS if f in flags]}


@functools.lru_cache(maxsize=None)
def describe() -> dict:
    try:
        return parse_cpuinfo(pathlib.Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        return {"model": platform.processor() or platform.machine(), "vector_isa": []}


# Instructions that compute bfloat16 dot products natively: AVX512_BF16 or AMX on x86, the BF16
# extension on ARM ("bf16" in its Features). Without them PyTorch 2.14's bfloat16 matmul ran at
# 0.94 GFLOP/s on an AVX2 AMD EPYC (float32: about 100), and oneDNN has no bfloat16 convolution.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def has_native_bf16(description: dict | None = None) -> bool:
    """Whether the CPU (`describe()`'s, or the given description) computes bf16 dot products natively."""
    isa = (description or describe())["vector_isa"]
    return any(flag in isa for flag in NATIVE_BF16_FLAGS)
