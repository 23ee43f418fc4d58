"""The command line re-runs itself once with tcmalloc preloaded or glibc's huge-page tunable, where
that can help, and in such a process a repeated step's large buffers are not faulted in again."""
import os
import runpy
import subprocess
import sys

import pytest

from slot_jax import host_memory


@pytest.fixture
def linux_glibc(monkeypatch):
    """Linux with glibc 2.36, huge pages on madvise, no tcmalloc."""
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host_memory, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(host_memory, "find_tcmalloc", lambda: None)


@pytest.fixture
def with_tcmalloc(linux_glibc, monkeypatch):
    monkeypatch.setattr(host_memory, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")


ASK = {host_memory.TCMALLOC: "1"}


def test_preloads_tcmalloc_when_asked_and_installed(with_tcmalloc):
    env = host_memory.host_environment({**ASK, "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {**ASK, "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2",
                   "LD_PRELOAD": "libtcmalloc_minimal.so.4", **host_memory.TCMALLOC_SETTINGS}
    assert host_memory.host_environment(env) is None  # no loop
    # Before the user's own preloads; a threshold of the user's own kept.
    env = host_memory.host_environment({**ASK, "LD_PRELOAD": "/opt/libfoo.so", "TCMALLOC_RELEASE_RATE": "5"})
    assert env == {**ASK, "LD_PRELOAD": "libtcmalloc_minimal.so.4 /opt/libfoo.so", "TCMALLOC_RELEASE_RATE": "5",
                   "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2 ** 40)}


@pytest.mark.parametrize("preload", ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "libmimalloc.so:/opt/libfoo.so"])
def test_keeps_an_allocator_the_user_preloaded(with_tcmalloc, preload):
    assert host_memory.host_environment({**ASK, "LD_PRELOAD": preload}) is None


@pytest.mark.parametrize("asked", [{}, {host_memory.TCMALLOC: "0"}])
def test_huge_pages_unless_tcmalloc_is_asked_for(with_tcmalloc, asked):
    assert host_memory.host_environment(asked) == {**asked, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_asking_for_tcmalloc_where_it_is_missing_says_so_once_and_falls_back(linux_glibc, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append(env))
    monkeypatch.setattr(os, "environ", {**ASK})
    host_memory.rerun_with_host_allocator()
    (env,), err = calls, capsys.readouterr().err
    assert env == {**ASK, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert err.count("\n") == 1 and "libtcmalloc-minimal4" in err
    monkeypatch.setattr(os, "environ", env)  # the re-run: no second note, no second re-run
    host_memory.rerun_with_host_allocator()
    assert len(calls) == 1 and capsys.readouterr().err == ""


def test_adds_the_tunable_and_keeps_the_rest_of_the_environment(linux_glibc):
    env = host_memory.host_environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert host_memory.host_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # The re-run's own environment asks for nothing more: no loop.
    assert host_memory.host_environment(env) is None


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
    assert host_memory.host_environment(environ) is None


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
    for variable in ("GLIBC_TUNABLES", "LD_PRELOAD", host_memory.OPT_OUT, host_memory.TCMALLOC):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-u", "-m", "slot_jax.main", "--config=c.py", "--workdir=w"])
    with pytest.raises(SystemExit):
        runpy.run_module("slot_jax.main", run_name="__main__")
    (path, args, env), = calls
    assert path == sys.executable and args == [sys.executable, "-u", "-m", "slot_jax.main", "--config=c.py", "--workdir=w"]
    assert env["GLIBC_TUNABLES"].endswith("glibc.malloc.hugetlb=1")


# The variables these tests set or read, removed from the environment they start processes in.
OURS = ("GLIBC_TUNABLES", "LD_PRELOAD", *host_memory.TCMALLOC_SETTINGS, host_memory.OPT_OUT,
        host_memory.TCMALLOC)


def clean_environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in OURS}


@pytest.mark.skipif(host_memory.host_environment({}) is None, reason="this machine has neither tcmalloc nor glibc's huge-page tunable")
def test_a_real_run_loads_the_config_in_a_process_with_the_allocator(tmp_path):
    """End to end: the config file, which the loader executes, records the environment it sees;
    it defines no get_config, so the run then ends with the usual one-line error (exit 2)."""
    seen = tmp_path / "tunables.txt"
    config = tmp_path / "probe.py"
    config.write_text(f"import os\nopen({str(seen)!r}, 'w').write(os.environ.get('GLIBC_TUNABLES', '') + '|' + "
                      f"os.environ.get('LD_PRELOAD', ''))\n")
    env = clean_environment()
    out = subprocess.run([sys.executable, "-m", "slot_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    expected = host_memory.host_environment(env)
    assert seen.read_text() == expected.get("GLIBC_TUNABLES", "") + "|" + expected.get("LD_PRELOAD", "")
    # And with the opt-out, the process runs as started.
    out = subprocess.run([sys.executable, "-m", "slot_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, env={**env, host_memory.OPT_OUT: "0"}, timeout=120)
    assert out.returncode == 2 and seen.read_text() == "|"


# A jitted function whose 64 MB result glibc maps afresh on every call (16,384 pages of 4 KiB):
# prints the median page faults of a call after warm-up. (The median, since a call that starts
# before the previous result is released takes a second block once.)
REPEATED_STEP = """
import resource, statistics, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sin(x) * 2 + jnp.cos(x)[::-1])
x = jnp.ones(16 * 2 ** 20)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[3:]))
"""


def faults_per_call(env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", REPEATED_STEP], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


@pytest.mark.parametrize("allocator", ["tcmalloc", "huge pages"])
def test_the_command_lines_allocator_stops_repeated_steps_faulting_their_buffers_in(allocator):
    env = clean_environment()
    if allocator == "tcmalloc":
        env[host_memory.TCMALLOC] = "1"
    changed = host_memory.host_environment(env)
    if changed is None or (allocator == "tcmalloc") != ("LD_PRELOAD" in changed):
        pytest.skip(f"{allocator} not available here (tcmalloc: Debian's libtcmalloc-minimal4; huge pages: glibc >= 2.35)")
    assert faults_per_call(env) > 8000  # the measurement sees glibc's fresh mappings
    # tcmalloc reuses the freed blocks (0 here); huge pages leave a few hundred (544 here) of 2 MiB.
    assert faults_per_call(changed) < (50 if allocator == "tcmalloc" else 2000)
