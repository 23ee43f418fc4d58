"""Joining a multi-process run (several hosts, or several processes on one) before JAX starts.

`jax.distributed.initialize` aborts the process with a C++ stack trace when the coordinator
cannot be reached or its port cannot be bound, so both are checked here first and reported as
one-line errors.
"""
import os
import pathlib
import secrets
import socket
import sys
import time

from slot_jax.errors import UserError

TIMEOUT_ENV = "SLOT_JAX_COORDINATOR_TIMEOUT"
DEFAULT_TIMEOUT_S = 300  # jax.distributed's own default for processes to find each other


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--coordinator_address {address!r} is not HOST:PORT: give e.g. 10.0.0.2:1234")
    return host.strip("[]"), int(port)


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        return float(value)
    except ValueError:
        raise UserError(f"${TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def check_port_free(port: int) -> None:
    """Process 0 hosts the coordinator on `port` of every interface, as jax.distributed does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as error:
            raise UserError(f"process 0 cannot listen on port {port} ({error.strerror}): another run may "
                            "hold it; choose another port in --coordinator_address") from None


def wait_for_coordinator(host: str, port: int, seconds: float) -> None:
    """Returns once process 0's coordinator accepts connections at host:port."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as connection:
                # Connecting to an unbound local port can pick that same port as the source and
                # reach itself (TCP simultaneous open): that is nobody answering.
                if connection.getsockname() != connection.getpeername():
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise UserError(f"process 0 did not answer at {host}:{port} within {seconds:.0f} s: start the "
                            "same command with --process_id=0 on that host, or fix the address "
                            f"(${TIMEOUT_ENV} sets the wait)")
        time.sleep(0.5)


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Joins process `process_id` of `num_processes` to the run coordinated at `coordinator_address`."""
    import jax
    host, port = split_address(coordinator_address)
    seconds = timeout_s()
    if process_id == 0:
        check_port_free(port)
    else:
        wait_for_coordinator(host, port, seconds)
    print(f"process {process_id} of {num_processes} joining {host}:{port}", file=sys.stderr, flush=True)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(seconds))


def check_shared_workdir(workdir, create: bool) -> None:
    """Every process must see the same workdir (a shared filesystem): process 0 writes a marker
    there and each process looks for it. Otherwise each host would keep its own part of every
    checkpoint and no process could restore one. All processes raise the same error."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    path = pathlib.Path(workdir)
    chief = jax.process_index() == 0
    token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
    marker = path / f".slot_jax_shared_check_{token}"
    created = False
    if chief:
        try:
            created = create and not path.exists()
            if created:
                path.mkdir(parents=True)
            marker.write_text(str(token))
        except OSError:
            token = -1  # workdir problems are reported by prepare_workdir on every process
    token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    if token < 0:
        return
    try:
        seen = marker.read_text() == str(token)
    except OSError:
        seen = False
    blind = np.flatnonzero(~multihost_utils.process_allgather(np.bool_(seen)))
    if chief:
        marker.unlink()
        if created and len(blind):
            path.rmdir()
    if len(blind):
        raise UserError(f"process(es) {', '.join(map(str, blind))} cannot see workdir {path} as process 0 "
                        "writes it: give every process the same --workdir, on a filesystem all hosts share")
