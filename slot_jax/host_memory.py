"""The memory allocator behind the command line's large host buffers (Linux).

XLA:CPU allocates a step's temporaries and outputs afresh on every call, and glibc maps each block
above 32 MB with new 4 KiB pages, so every step faults them in again: about 130,000 page faults
per train step of the 64x64 benchmark model, at about 1.6 us each on our VM. SLOT_JAX_ALLOCATOR:
- auto (default): jemalloc where it is installed (Debian/Ubuntu: libjemalloc2; conda: jemalloc),
  otherwise glibc's huge pages.
- jemalloc: preloaded in place of glibc's malloc, with huge pages and a 256 MB "oversize"
  threshold. Freed blocks below it are kept for the next step; blocks above it are handed back
  at once. That matters because XLA allocates a step's temporaries before the previous step has
  freed its own: an allocator that keeps everything ends up holding two copies of the largest
  buffer (tcmalloc: 3.7 against 2.3 GB peak on the report model at batch 8), while the threshold
  caps the excess (2.39 GB there) and keeps the small steps' gain (benchmarks/host_memory.py).
- tcmalloc: gperftools' tcmalloc (libtcmalloc-minimal4), which keeps every freed block.
- hugepages: glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35): 2 MiB pages for those
  mappings, a few hundred faults per step, but each new page is still zeroed.
- off: the process as started.
All act only from a process's start, so `python -m slot_jax.main` runs itself again, once, with
LD_PRELOAD or GLIBC_TUNABLES extended.
"""
import ctypes.util
import functools
import os
import pathlib
import platform
import sys
from typing import Mapping, Optional

from slot_jax.errors import UserError

ALLOCATOR = "SLOT_JAX_ALLOCATOR"
CHOICES = ("auto", "jemalloc", "tcmalloc", "hugepages", "off")
TUNABLE = "glibc.malloc.hugetlb=1"
LIBRARIES = {"jemalloc": ("jemalloc",), "tcmalloc": ("tcmalloc_minimal", "tcmalloc")}  # names for find_library
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}  # Debian/Ubuntu
# The oversize arena returns its blocks as soon as they are freed (its decay is 0 by default).
JEMALLOC_CONF = "thp:always,metadata_thp:auto,oversize_threshold:268435456"
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


@functools.cache  # find_library runs ldconfig
def find_allocator(name: str) -> Optional[str]:
    """The name the dynamic loader knows allocator `name` ("jemalloc", "tcmalloc") by, or None."""
    for library in LIBRARIES[name]:
        found = ctypes.util.find_library(library)
        if found:
            return found
    return None


def _allocator_preloaded(preload: str) -> bool:
    """Whether LD_PRELOAD already names an allocator (tcmalloc, jemalloc, mimalloc, ...)."""
    return any("malloc" in pathlib.Path(entry).name for entry in preload.replace(":", " ").split())


def allocator_choice(environ: Mapping[str, str]) -> str:
    choice = environ.get(ALLOCATOR, "") or "auto"
    if choice not in CHOICES:
        raise UserError(f"{ALLOCATOR}={choice!r} is not an allocator choice: use one of {', '.join(CHOICES)} "
                        "(or unset it for auto)")
    return choice


def preload_environment(name: str, library: str, environ: Mapping[str, str]) -> dict:
    """`environ` with allocator `name` (its `library`) first in LD_PRELOAD and its settings; the
    user's own settings win (jemalloc reads later MALLOC_CONF options over earlier ones)."""
    env = {**environ, "LD_PRELOAD": " ".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))}
    if name == "jemalloc":
        env["MALLOC_CONF"] = ",".join(filter(None, [JEMALLOC_CONF, environ.get("MALLOC_CONF", "")]))
        return env
    return {**TCMALLOC_SETTINGS, **env}


def allocator_plan(environ: Mapping[str, str]) -> tuple:
    """(the environment to run again in, or None where it would change nothing; a note for the
    user, or None). Nothing changes off Linux, with `off`, with an allocator already preloaded (by
    the user, or by the re-run itself; a jemalloc the user preloaded without MALLOC_CONF gets a
    note), or where neither a library nor huge pages can apply. `auto`
    also keeps a huge-page setting of the user's. A named library that is missing gets a note and
    huge pages."""
    choice = allocator_choice(environ)
    preload = environ.get("LD_PRELOAD", "")
    if sys.platform != "linux" or choice == "off":
        return None, None
    if _allocator_preloaded(preload):
        if "jemalloc" in preload and "MALLOC_CONF" not in environ:
            return None, ("note: jemalloc is preloaded without MALLOC_CONF, so it hands each step's large "
                          "blocks back and the kernel faults them in again (0.86x the speed on the 64x64 "
                          f"benchmark model): set MALLOC_CONF={JEMALLOC_CONF}, or unset LD_PRELOAD and "
                          "slot_jax preloads jemalloc with it")
        return None, None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if choice == "auto" and "glibc.malloc.hugetlb" in tunables:
        return None, None
    note, name = None, {"auto": "jemalloc"}.get(choice, choice)
    if name in LIBRARIES:
        library = find_allocator(name)
        if library is not None:
            return preload_environment(name, library, environ), None
        if choice != "auto" and TUNABLE not in tunables:  # not in the re-run that this note announces
            note = (f"note: {ALLOCATOR}={choice}, but {choice} is not installed (Debian/Ubuntu: "
                    f"{PACKAGES[choice]}); running on glibc's malloc")
    if "glibc.malloc.hugetlb" in tunables or _glibc_version() < (2, 35) or _thp_mode() not in ("always", "madvise"):
        return None, note
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, TUNABLE]))}, note


def host_environment(environ: Mapping[str, str]) -> Optional[dict]:
    """The environment that the command line would run again in, or None (see allocator_plan)."""
    return allocator_plan(environ)[0]


def rerun_with_host_allocator() -> None:
    """Replaces this process by the same command line (interpreter options included) with the
    chosen allocator, where that changes anything. Call it before any work (no JAX computation; it
    prints at most a note, once). Returns only where it changes nothing; raises UserError on an
    unknown SLOT_JAX_ALLOCATOR."""
    environment, note = allocator_plan(os.environ)
    if note:
        print(note, file=sys.stderr)
    if environment is not None and sys.executable:  # an embedded interpreter may have no executable
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
