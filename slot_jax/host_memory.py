"""Transparent huge pages for the command line's large host buffers (Linux with glibc >= 2.35).

XLA:CPU allocates a step's temporaries and outputs afresh on every call, and glibc maps each block
above 32 MB with new 4 KiB pages, so every step faults them in again: about 130,000 page faults
per train step of the 64x64 benchmark model, at about 1.6 us each on our VM. glibc's tunable
`glibc.malloc.hugetlb=1` asks for transparent huge pages (2 MiB) on those mappings, which cuts the
faults to a few hundred per step. glibc reads tunables only when a process starts, so
`python -m slot_jax.main` runs itself again, once, with the tunable added to GLIBC_TUNABLES.
Set SLOT_JAX_HUGEPAGES=0 to keep the process as started.
"""
import os
import pathlib
import platform
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "SLOT_JAX_HUGEPAGES"
THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    """The kernel's transparent-huge-page mode: "always", "madvise", "never" or "" if unknown."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return ""
    chosen = [word for word in text.split() if word.startswith("[")]
    return chosen[0].strip("[]") if chosen else ""


def _glibc_version() -> tuple:
    libc, version = platform.libc_ver()
    try:
        return tuple(int(part) for part in version.split(".")) if libc == "glibc" else ()
    except ValueError:
        return ()


def hugepage_environment(environ: Mapping[str, str]) -> Optional[dict]:
    """The environment to run again in, or None where it would change nothing: not Linux, glibc
    older than 2.35 (no such tunable), huge pages off in the kernel, the tunable already set (also
    after the re-run), or the opt-out."""
    if sys.platform != "linux" or environ.get(OPT_OUT) == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    if _glibc_version() < (2, 35) or _thp_mode() not in ("always", "madvise"):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, TUNABLE]))}


def rerun_with_hugepages() -> None:
    """Replaces this process by the same command line (interpreter options included) with huge
    pages on, where that helps. Call it before any work: nothing printed, no JAX computation.
    Returns only where it changes nothing."""
    environment = hugepage_environment(os.environ)
    if environment is not None and sys.executable:  # an embedded interpreter may have no executable
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
