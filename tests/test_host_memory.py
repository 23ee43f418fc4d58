"""The command line re-runs itself once with glibc's huge-page tunable, where that can help."""
import os
import runpy
import subprocess
import sys

import pytest

from slot_jax import host_memory


@pytest.fixture
def linux_glibc(monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host_memory, "_thp_mode", lambda: "madvise")


def test_adds_the_tunable_and_keeps_the_rest_of_the_environment(linux_glibc):
    env = host_memory.hugepage_environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert host_memory.hugepage_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # The re-run's own environment asks for nothing more: no loop.
    assert host_memory.hugepage_environment(env) is None


@pytest.mark.parametrize("case", ["opt_out", "user_setting", "old_glibc", "musl", "thp_never", "not_linux"])
def test_changes_nothing_where_it_cannot_help(linux_glibc, monkeypatch, case):
    environ = {"PATH": "/bin"}
    if case == "opt_out":
        environ[host_memory.OPT_OUT] = "0"
    elif case == "user_setting":
        environ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=0"
    elif case == "old_glibc":
        monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.31"))
    elif case == "musl":
        monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    elif case == "thp_never":
        monkeypatch.setattr(host_memory, "_thp_mode", lambda: "never")
    else:
        monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.hugepage_environment(environ) is None


def test_reads_the_kernels_mode(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_memory, "THP_SETTING", setting)
    assert host_memory._thp_mode() == "madvise"
    monkeypatch.setattr(host_memory, "THP_SETTING", tmp_path / "missing")
    assert host_memory._thp_mode() == ""


def test_the_command_line_reexecutes_itself_with_the_same_arguments(linux_glibc, monkeypatch):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise SystemExit(0)
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(host_memory.OPT_OUT, raising=False)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-u", "-m", "slot_jax.main", "--config=c.py", "--workdir=w"])
    with pytest.raises(SystemExit):
        runpy.run_module("slot_jax.main", run_name="__main__")
    (path, args, env), = calls
    assert path == sys.executable and args == [sys.executable, "-u", "-m", "slot_jax.main", "--config=c.py", "--workdir=w"]
    assert env["GLIBC_TUNABLES"].endswith("glibc.malloc.hugetlb=1")


@pytest.mark.skipif(host_memory.hugepage_environment({}) is None, reason="this machine has no glibc huge-page tunable")
def test_a_real_run_loads_the_config_in_a_process_with_the_tunable(tmp_path):
    """End to end: the config file, which the loader executes, records the environment it sees;
    it defines no get_config, so the run then ends with the usual one-line error (exit 2)."""
    seen = tmp_path / "tunables.txt"
    config = tmp_path / "probe.py"
    config.write_text(f"import os\nopen({str(seen)!r}, 'w').write(os.environ.get('GLIBC_TUNABLES', ''))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    out = subprocess.run([sys.executable, "-m", "slot_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert seen.read_text() == "glibc.malloc.hugetlb=1"
    # And with the opt-out, the process runs as started.
    out = subprocess.run([sys.executable, "-m", "slot_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, env={**env, host_memory.OPT_OUT: "0"}, timeout=120)
    assert out.returncode == 2 and seen.read_text() == ""
