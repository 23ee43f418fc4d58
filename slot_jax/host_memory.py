"""The memory allocator behind the command line's large host buffers (Linux).

XLA:CPU allocates a step's temporaries and outputs afresh on every call, and glibc maps each block
above 32 MB with new 4 KiB pages, so every step faults them in again: about 130,000 page faults
per train step of the 64x64 benchmark model, at about 1.6 us each on our VM. Two remedies:
- glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35), the default: transparent huge pages
  (2 MiB) on those mappings, a few hundred faults per step, but each new page is still zeroed.
- gperftools' tcmalloc preloaded in place of glibc's malloc, with SLOT_JAX_TCMALLOC=1 where it is
  installed (Debian/Ubuntu: libtcmalloc-minimal4; conda: gperftools). It keeps freed blocks for
  the next step: steps of the quick configs ran 1.1-1.55x faster than with huge pages, but the
  report config's peak RSS grew by 56-71% (benchmarks/host_memory.py), so it is not the default.
Both act only from a process's start, so `python -m slot_jax.main` runs itself again, once, with
LD_PRELOAD or GLIBC_TUNABLES extended. SLOT_JAX_HUGEPAGES=0 keeps the process as started.
"""
import ctypes.util
import functools
import os
import pathlib
import platform
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "SLOT_JAX_HUGEPAGES"
TCMALLOC = "SLOT_JAX_TCMALLOC"  # "1": preload tcmalloc where installed
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # gperftools' builds, without and with its profiler
# gperftools reports each allocation above 1 GiB on stderr, which the report configs' steps make
# routinely; and it hands freed memory back gradually, which made the report model's batch-8 step
# fault 57,600 pages in again (3 at rate 0, at the same peak RSS and speed).
TCMALLOC_SETTINGS = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2 ** 40), "TCMALLOC_RELEASE_RATE": "0"}
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


@functools.cache  # find_library runs ldconfig; asked twice when tcmalloc is missing
def find_tcmalloc() -> Optional[str]:
    """The name the dynamic loader knows gperftools' tcmalloc by, or None where it is not installed."""
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def _allocator_preloaded(preload: str) -> bool:
    """Whether LD_PRELOAD already names an allocator (tcmalloc, jemalloc, mimalloc, ...)."""
    return any("malloc" in pathlib.Path(entry).name for entry in preload.replace(":", " ").split())


def host_environment(environ: Mapping[str, str]) -> Optional[dict]:
    """The environment to run again in, or None where it would change nothing: not Linux, an
    allocator already preloaded or the huge-page tunable already set (by the user, or by the
    re-run itself), neither remedy available, or the opt-out. tcmalloc only when asked for
    (SLOT_JAX_TCMALLOC=1) and installed; huge pages otherwise."""
    if sys.platform != "linux" or environ.get(OPT_OUT) == "0":
        return None
    preload = environ.get("LD_PRELOAD", "")
    if _allocator_preloaded(preload):
        return None
    tcmalloc = find_tcmalloc() if environ.get(TCMALLOC) == "1" else None
    if tcmalloc is not None:
        return {**TCMALLOC_SETTINGS, **environ, "LD_PRELOAD": " ".join(filter(None, [tcmalloc, preload]))}
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    if _glibc_version() < (2, 35) or _thp_mode() not in ("always", "madvise"):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, TUNABLE]))}


def rerun_with_host_allocator() -> None:
    """Replaces this process by the same command line (interpreter options included) with tcmalloc
    or huge pages, where that helps. Call it before any work (no JAX computation; it prints at most
    a note, once). Returns only where it changes nothing."""
    if sys.platform == "linux" and os.environ.get(TCMALLOC) == "1" and os.environ.get(OPT_OUT) != "0" \
            and not _allocator_preloaded(os.environ.get("LD_PRELOAD", "")) \
            and TUNABLE not in os.environ.get("GLIBC_TUNABLES", "") and find_tcmalloc() is None:
        print(f"note: {TCMALLOC}=1, but gperftools' tcmalloc is not installed (Debian/Ubuntu: "
              "libtcmalloc-minimal4); running on glibc's malloc", file=sys.stderr)
    environment = host_environment(os.environ)
    if environment is not None and sys.executable:  # an embedded interpreter may have no executable
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
