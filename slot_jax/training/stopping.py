"""Stopping a run between steps without losing them: on SIGTERM (a preempted VM, a batch system's
time limit, `kill`) or Ctrl-C the loop finishes its step, saves a checkpoint and stops; the same
command resumes there. A second signal stops at once, from the latest saved checkpoint.

In a multi-process run every process must save the same step. JAX's preemption service (started
by `jax.distributed.initialize`) catches SIGTERM on any process, tells the others and names the
step where all of them stop; Ctrl-C is passed to it as a SIGTERM.
"""
import os
import signal
import threading


class Stopped(Exception):
    """Training stopped early on request, after saving a checkpoint at `step`."""

    def __init__(self, step: int, cause: str, checkpoint, exit_status: int):
        self.step, self.cause, self.checkpoint, self.exit_status = step, cause, checkpoint, exit_status
        super().__init__(f"stopped by {cause} after step {step}: checkpoint saved in {checkpoint}; "
                         "rerun the same command to resume")


class StopRequests:
    """Within `with StopRequests() as requests:`, SIGTERM and SIGINT only ask the loop to stop;
    `requests.reached(step)` says whether this step is where to stop."""

    def __init__(self):
        import jax  # not at import time: the command line imports Stopped before parsing --help

        self.several_processes = jax.process_count() > 1
        self.signal = None
        self._previous = {}

    @property
    def cause(self) -> str:
        if self.signal is not None:
            return signal.Signals(self.signal).name
        return "a preemption notice (SIGTERM) to a process of this run"

    @property
    def exit_status(self) -> int:
        return 128 + (self.signal or signal.SIGTERM)  # the shell's status for death by that signal

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # Python runs signal handlers on the main thread only: leave them alone
        # In a multi-process run SIGTERM belongs to JAX's preemption service.
        caught = (signal.SIGINT,) if self.several_processes else (signal.SIGINT, signal.SIGTERM)
        for number in caught:
            if signal.getsignal(number) is not signal.SIG_IGN:  # nohup, or a background job of a script
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        return False

    def _handle(self, number, frame):
        if self.signal is not None:  # asked twice: stop now
            self.__exit__()
            if number == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), number)  # the restored default handler ends the process
            return
        self.signal = number
        if self.several_processes:
            os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service, which tells the others

    def reached(self, step: int) -> bool:
        if self.several_processes:  # every process must ask at every step, whatever it was told
            from jax.experimental import multihost_utils
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the service is off (jax_enable_preemption_service=False)
                return False
        return self.signal is not None
