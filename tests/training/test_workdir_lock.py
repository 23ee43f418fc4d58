"""One run at a time in a workdir: a second holder is refused with one line naming the first, the
lock goes with its process however it ends, and nested holds in one process are one hold."""
import errno
import fcntl
import os
import signal

import pytest

from conftest import held_by_another_process
from slot_jax import main as cli
from slot_jax.errors import UserError
from slot_jax.training import workdir_lock
from slot_jax.training.workdir_lock import LOCK_FILE, hold_workdir


@pytest.fixture
def holder(tmp_path):
    """(workdir, the other process that holds it until the test ends)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    with held_by_another_process(workdir) as process:
        yield workdir, process


def _locked_elsewhere(workdir) -> bool:
    """Whether a new open file description is refused the lock (as another process would be)."""
    with open(workdir / LOCK_FILE, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
        return False


def test_a_second_holder_is_refused_naming_the_first_until_it_is_killed(holder):
    workdir, process = holder
    with pytest.raises(UserError) as error:
        with hold_workdir(workdir):
            pass
    message = str(error.value)
    assert f"pid {process.pid} on " in message and str(workdir) in message and "--workdir" in message
    assert "\n" not in message
    process.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
    process.wait()
    with hold_workdir(workdir):
        assert (workdir / LOCK_FILE).read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"


def test_nested_holds_are_one_hold_released_at_the_outer_end(tmp_path):
    with hold_workdir(tmp_path):
        with hold_workdir(tmp_path / "." / ""):  # the same directory, spelled differently
            assert _locked_elsewhere(tmp_path)
        assert _locked_elsewhere(tmp_path)  # the inner end released nothing
    assert not _locked_elsewhere(tmp_path)


def test_a_disabled_hold_neither_locks_nor_waits(holder):
    workdir, _ = holder  # a multi-process run's other processes share the chief's workdir
    with hold_workdir(workdir, enabled=False):
        pass


def test_a_filesystem_without_locks_runs_unguarded(tmp_path, monkeypatch):
    def no_locks(file, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with hold_workdir(tmp_path):
        pass
    assert workdir_lock._held == set()


def test_the_command_line_refuses_a_workdir_in_use_and_writes_nothing(holder, tiny_args, capsys):
    workdir, process = holder
    before = sorted(p.name for p in workdir.iterdir())
    for mode in ("train", "eval"):
        code = cli.main([f"--mode={mode}", *tiny_args(workdir, **{"train.num_steps": 2})])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"pid {process.pid}" in err and "in use" in err
    assert sorted(p.name for p in workdir.iterdir()) == before == [LOCK_FILE]
