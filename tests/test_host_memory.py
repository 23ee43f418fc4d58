"""The command line re-runs itself once with jemalloc (or tcmalloc) preloaded or glibc's huge-page
tunable, where that can help; in such a process a repeated step's large buffers are not faulted in
again, and the largest are not held twice."""
import os
import runpy
import subprocess
import sys

import pytest

from slot_jax import host_memory
from slot_jax.errors import UserError

JEMALLOC, TCMALLOC = "libjemalloc.so.2", "libtcmalloc_minimal.so.4"


@pytest.fixture
def linux_glibc(monkeypatch):
    """Linux with glibc 2.36, huge pages on madvise, neither jemalloc nor tcmalloc."""
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host_memory, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(host_memory, "find_allocator", lambda name: None)


@pytest.fixture
def with_both(linux_glibc, monkeypatch):
    monkeypatch.setattr(host_memory, "find_allocator", {"jemalloc": JEMALLOC, "tcmalloc": TCMALLOC}.get)


def ask(choice: str) -> dict:
    return {host_memory.ALLOCATOR: choice}


@pytest.mark.parametrize("environ", [{}, ask("auto"), ask("jemalloc"), ask("")])
def test_preloads_jemalloc_by_default_where_installed(with_both, environ):
    env = host_memory.host_environment({**environ, "PATH": "/bin"})
    assert env == {**environ, "PATH": "/bin", "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": host_memory.JEMALLOC_CONF}
    assert host_memory.host_environment(env) is None  # no loop
    # Before the user's own preloads; the user's jemalloc options after ours, so that they win.
    env = host_memory.host_environment({**environ, "LD_PRELOAD": "/opt/libfoo.so", "MALLOC_CONF": "narenas:2"})
    assert env["LD_PRELOAD"] == f"{JEMALLOC} /opt/libfoo.so"
    assert env["MALLOC_CONF"] == host_memory.JEMALLOC_CONF + ",narenas:2"


def test_preloads_tcmalloc_when_asked(with_both):
    env = host_memory.host_environment({**ask("tcmalloc"), "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {**ask("tcmalloc"), "PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2",
                   "LD_PRELOAD": TCMALLOC, **host_memory.TCMALLOC_SETTINGS}
    assert host_memory.host_environment(env) is None
    # A threshold of the user's own kept.
    env = host_memory.host_environment({**ask("tcmalloc"), "TCMALLOC_RELEASE_RATE": "5"})
    assert env["TCMALLOC_RELEASE_RATE"] == "5" and env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(2 ** 40)


@pytest.mark.parametrize("preload", ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "libmimalloc.so:/opt/libfoo.so"])
@pytest.mark.parametrize("choice", ["auto", "tcmalloc", "hugepages"])
def test_keeps_an_allocator_the_user_preloaded(with_both, preload, choice):
    assert host_memory.host_environment({**ask(choice), "LD_PRELOAD": preload}) is None


@pytest.mark.parametrize("environ", [{}, ask("hugepages")])
def test_huge_pages_without_jemalloc_or_when_asked(linux_glibc, monkeypatch, environ):
    if environ:  # asked for: even where jemalloc is installed
        monkeypatch.setattr(host_memory, "find_allocator", {"jemalloc": JEMALLOC}.get)
    assert host_memory.host_environment(environ) == {**environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("choice", ["jemalloc", "tcmalloc"])
def test_asking_for_a_missing_allocator_says_so_once_and_falls_back(linux_glibc, monkeypatch, capsys, choice):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append(env))
    monkeypatch.setattr(os, "environ", ask(choice))
    host_memory.rerun_with_host_allocator()
    (env,), err = calls, capsys.readouterr().err
    assert env == {**ask(choice), "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert err.count("\n") == 1 and host_memory.PACKAGES[choice] in err
    monkeypatch.setattr(os, "environ", env)  # the re-run: no second note, no second re-run
    host_memory.rerun_with_host_allocator()
    assert len(calls) == 1 and capsys.readouterr().err == ""
    # Where huge pages cannot apply either, the note comes once and the process runs on.
    monkeypatch.setattr(host_memory, "_thp_mode", lambda: "never")
    monkeypatch.setattr(os, "environ", ask(choice))
    host_memory.rerun_with_host_allocator()
    assert len(calls) == 1 and capsys.readouterr().err.count("\n") == 1


def test_a_jemalloc_preloaded_without_its_settings_gets_a_note_and_is_kept(with_both, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, args, env: calls.append(env))
    monkeypatch.setattr(os, "environ", {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    host_memory.rerun_with_host_allocator()
    err = capsys.readouterr().err
    assert calls == [] and err.count("\n") == 1 and "without MALLOC_CONF" in err
    assert f"MALLOC_CONF={host_memory.JEMALLOC_CONF}" in err
    for settings in ({"MALLOC_CONF": "narenas:2"}, {"MALLOC_CONF": ""}, {host_memory.ALLOCATOR: "off"}):
        monkeypatch.setattr(os, "environ", {"LD_PRELOAD": "libjemalloc.so.2", **settings})  # the user's choice
        host_memory.rerun_with_host_allocator()
        assert calls == [] and capsys.readouterr().err == ""
    monkeypatch.setattr(os, "environ", {"LD_PRELOAD": TCMALLOC})
    host_memory.rerun_with_host_allocator()
    assert calls == [] and capsys.readouterr().err == ""


def test_an_unknown_choice_is_a_one_line_error(with_both):
    with pytest.raises(UserError, match="SLOT_JAX_ALLOCATOR='tcmaloc' is not an allocator choice: use one of auto"):
        host_memory.host_environment(ask("tcmaloc"))


def test_adds_the_tunable_and_keeps_the_rest_of_the_environment(linux_glibc):
    env = host_memory.host_environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert host_memory.host_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # The re-run's own environment asks for nothing more: no loop.
    assert host_memory.host_environment(env) is None


@pytest.mark.parametrize("case", ["off", "user_setting", "old_glibc", "musl", "thp_never", "not_linux"])
def test_changes_nothing_where_it_cannot_help(linux_glibc, monkeypatch, case):
    environ = {"PATH": "/bin"}
    if case == "off":
        monkeypatch.setattr(host_memory, "find_allocator", {"jemalloc": JEMALLOC}.get)
        environ[host_memory.ALLOCATOR] = "off"
    elif case == "user_setting":  # auto keeps the user's own huge-page setting, even with jemalloc
        monkeypatch.setattr(host_memory, "find_allocator", {"jemalloc": JEMALLOC}.get)
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
    for variable in ("GLIBC_TUNABLES", "LD_PRELOAD", host_memory.ALLOCATOR):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-u", "-m", "slot_jax.main", "--config=c.py", "--workdir=w"])
    with pytest.raises(SystemExit):
        runpy.run_module("slot_jax.main", run_name="__main__")
    (path, args, env), = calls
    assert path == sys.executable and args == [sys.executable, "-u", "-m", "slot_jax.main", "--config=c.py", "--workdir=w"]
    assert env["GLIBC_TUNABLES"].endswith("glibc.malloc.hugetlb=1")


# The variables these tests set or read, removed from the environment they start processes in.
OURS = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF", *host_memory.TCMALLOC_SETTINGS, host_memory.ALLOCATOR)


def clean_environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in OURS}


@pytest.mark.skipif(host_memory.host_environment({}) is None, reason="this machine has neither jemalloc nor glibc's huge-page tunable")
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
    # With "off", the process runs as started.
    out = subprocess.run([sys.executable, "-m", "slot_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, env={**env, host_memory.ALLOCATOR: "off"}, timeout=120)
    assert out.returncode == 2 and seen.read_text() == "|"
    # An unknown choice: one line, exit 2, before anything runs.
    seen.unlink()
    out = subprocess.run([sys.executable, "-m", "slot_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, env={**env, host_memory.ALLOCATOR: "glibc"}, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: SLOT_JAX_ALLOCATOR='glibc'"), out.stderr
    assert out.stderr.count("\n") == 1 and not seen.exists()


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


@pytest.mark.parametrize("choice", ["jemalloc", "tcmalloc", "hugepages"])
def test_the_command_lines_allocator_stops_repeated_steps_faulting_their_buffers_in(choice):
    env = clean_environment()
    changed = host_memory.host_environment({**env, **ask(choice)})
    if changed is None or (choice != "hugepages") != (changed.get("LD_PRELOAD", "").startswith("lib" + choice)):
        pytest.skip(f"{choice} not available here (Debian: libjemalloc2, libtcmalloc-minimal4; huge pages: glibc >= 2.35)")
    assert faults_per_call(env) > 8000  # the measurement sees glibc's fresh mappings
    # jemalloc and tcmalloc reuse the freed blocks (0 here); huge pages leave a few hundred (544 here) of 2 MiB.
    assert faults_per_call(changed) < (2000 if choice == "hugepages" else 50)


# 24 asynchronous calls of a function with two 293 MB temporaries; prints the growth of the peak
# RSS over them in MB. XLA allocates a call's temporaries before the previous call has freed its
# own, so an allocator that keeps freed blocks ends up holding more than one set.
LARGE_TEMPORARIES = """
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (jnp.tanh(x @ w) @ w)[:1024, 0])  # small results: the peak shows the temporaries
x, w = jnp.ones((1_200_000, 64)), jnp.ones((64, 64))
f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
jax.block_until_ready([f(x, w) for _ in range(24)])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def peak_growth_mb(env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", LARGE_TEMPORARIES], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


def test_jemalloc_hands_the_largest_blocks_back_so_they_are_not_held_twice():
    changed = host_memory.host_environment({**clean_environment(), **ask("jemalloc")})
    if changed is None or "jemalloc" not in changed.get("LD_PRELOAD", ""):
        pytest.skip("jemalloc not installed here (Debian: libjemalloc2)")
    # The control: jemalloc keeping blocks of any size holds another set (588 MB here, alone). On
    # a busy machine the calls may not overlap (0 MB beside the rest of the suite), and then this
    # run cannot tell the settings apart.
    keeping = {**changed, "MALLOC_CONF": changed["MALLOC_CONF"] + ",oversize_threshold:4294967296"}
    if peak_growth_mb(keeping) < 400:
        pytest.skip("the calls did not overlap in this run (a busy machine), so no allocator held a second set")
    assert peak_growth_mb(changed) < 150  # 16-24 MB here (glibc with huge pages: 28)
