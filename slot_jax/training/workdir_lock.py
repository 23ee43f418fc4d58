"""One run at a time in a workdir.

Two runs in one workdir would each rotate the other's checkpoints away and interleave their
metrics; a rerun started while a stopped run is still saving its last checkpoint resumes from
the one before. So training and evaluation hold an exclusive `flock` on WORKDIR/.slot_jax.lock
for as long as they write there. The kernel drops it when the process ends, however it ends, so
a killed run leaves nothing to clean up. Where the filesystem cannot lock (some network mounts),
or there is no `fcntl` (Windows), runs go on unguarded, as before this module.
"""
import contextlib
import os
import pathlib
import socket

from slot_jax.errors import UserError

LOCK_FILE = ".slot_jax.lock"
_held: set = set()  # workdirs this process holds: the pipeline holds its workdir, then a stage holds it again


@contextlib.contextmanager
def hold_workdir(workdir, *, enabled: bool = True):
    """Within `with hold_workdir(w):` no other process can hold `w`; raises UserError, naming the
    holder, where one does. `enabled=False` (a multi-process run's other processes) holds nothing."""
    key = pathlib.Path(workdir).resolve()
    if not enabled or key in _held:
        yield
        return
    file = _lock(key)
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        if file is not None:
            file.close()  # releases the lock


def _lock(workdir: pathlib.Path):
    """The open, locked lock file, or None where locking is not possible."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        file = open(workdir / LOCK_FILE, "a+")  # not "w": the holder's line must survive a refused open
    except OSError:
        return None  # a read-only workdir: the first write after this reports it
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise UserError(f"workdir {workdir} is in use by another slot_jax run ({holder}): wait for it to end "
                        "or stop it, or choose another --workdir") from None
    except OSError:
        file.close()
        return None
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    file.flush()
    return file
