"""Chooses XLA:CPU's convolution kernels before JAX starts its CPU backend.

jaxlib 0.8.3 to 0.10 hand convolutions to YNNPACK by default. On the 2-core x86 CPU we develop
on, XLA's older Eigen convolutions ran the same layers 1.1-2.7x faster for a forward and backward
pass (benchmarks/conv_kernels.py), and whole train steps up to 1.4x faster (README). So
`import slot_jax` adds one flag to XLA_FLAGS that takes convolutions (only them) out of YNNPACK.

XLA reads XLA_FLAGS once, when the first JAX computation starts the CPU backend, and aborts on a
flag it does not know. Hence the flag is only added for jaxlib releases whose XLA has it (checked
in the released wheels), and never when XLA_FLAGS already sets it or the user opts out with
SLOT_JAX_YNN_CONVOLUTIONS=1. The flag changes no results beyond float rounding, and on GPU and
TPU it does nothing.
"""
import importlib.metadata
import os
import re

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{FLAG_NAME}=-individual_convolution"
OPT_OUT = "SLOT_JAX_YNN_CONVOLUTIONS"
# jaxlib releases whose XLA knows FLAG_NAME: found in 0.8.3, 0.9.0, 0.9.2, 0.10.0 and 0.10.2,
# absent from 0.8.0. Later releases are left alone until checked, since an unknown flag is fatal.
KNOWN_RELEASES = ((0, 8, 3), (0, 10, 999))


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def flag_is_known(jaxlib_version: str) -> bool:
    low, high = KNOWN_RELEASES
    return low <= _release(jaxlib_version) <= high


def eigen_convolutions() -> bool:
    """Whether XLA_FLAGS takes convolutions out of YNNPACK (set by us or by the user). The flag's
    value is either "+a,-b" edits of XLA's default list, or a whole list replacing it."""
    values = [flag.split("=", 1)[1] for flag in os.environ.get("XLA_FLAGS", "").split()
              if flag.startswith(f"--{FLAG_NAME}=")]
    if not values:
        return False  # XLA's default, which has convolutions in YNNPACK
    items = [item.strip().lower() for item in values[-1].split(",") if item.strip()]
    if items and all(item[0] in "+-" for item in items):
        return "-individual_convolution" in items
    return "individual_convolution" not in items


def prefer_eigen_convolutions() -> bool:
    """Adds FLAG to XLA_FLAGS where that is safe; returns whether it is now set."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG_NAME in flags or os.environ.get(OPT_OUT, "") not in ("", "0"):
        return eigen_convolutions()
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not flag_is_known(version):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
