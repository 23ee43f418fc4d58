"""Stop requests: a signal asks the loop to stop between steps, a second one stops at once, and a
multi-process run leaves the choice of step to JAX's preemption service."""
import os
import signal
import subprocess
import sys
import threading

import pytest

from slot_jax.training import stopping
from slot_jax.training.stopping import StopRequests


@pytest.mark.parametrize("number, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_asks_to_stop_and_the_handlers_are_given_back(number, status):
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    with StopRequests() as requests:
        assert not requests.reached(1)
        os.kill(os.getpid(), number)
        assert requests.reached(2) and requests.reached(3)
        assert requests.cause == number.name and requests.exit_status == status
    assert {n: signal.getsignal(n) for n in before} == before


def test_a_second_ctrl_c_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt):
        with StopRequests():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_sigterm_ends_the_process():
    code = ("import os, signal\nfrom slot_jax.training.stopping import StopRequests\n"
            "with StopRequests() as requests:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    print('asked', requests.reached(1), flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    print('still running')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGTERM and result.stdout == "asked True\n", result.stderr[-2000:]


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job of a script
    try:
        with StopRequests() as requests:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not requests.reached(1)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_off_the_main_thread_signals_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        with StopRequests() as requests:
            seen.append((signal.getsignal(signal.SIGTERM), requests.reached(1)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(before, False)]


def test_several_processes_stop_where_the_preemption_service_says(monkeypatch):
    import jax
    from jax.experimental import multihost_utils

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    asked, sent = [], []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: asked.append(step) or step == 5)
    monkeypatch.setattr(stopping.os, "kill", lambda pid, number: sent.append((pid, number)))
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as requests:
        assert signal.getsignal(signal.SIGTERM) is before  # SIGTERM stays with JAX's service
        handler = signal.getsignal(signal.SIGINT)
        assert [requests.reached(step) for step in (3, 4)] == [False, False]
        handler(signal.SIGINT, None)  # Ctrl-C on this process becomes a preemption notice for all
        assert sent == [(os.getpid(), signal.SIGTERM)]
        assert requests.reached(4) is False and requests.reached(5) is True
        assert requests.cause == "SIGINT" and requests.exit_status == 130
    assert asked == [3, 4, 4, 5]
    assert StopRequests().cause == "a preemption notice (SIGTERM) to a process of this run"
