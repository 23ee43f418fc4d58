"""Where training reports go: a JSONL file, TensorBoard, and a progress line on the terminal."""
import json
import math
import pathlib
import sys
import time


class MetricWriter:
    """Appends one JSON object per call to `metrics.jsonl`; mirrors scalars to TensorBoard."""

    def __init__(self, workdir: pathlib.Path, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tensorboard = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # TensorBoard logging is optional; the JSONL file is the record.
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tensorboard = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Prints `step s/N | x steps/s | ETA | loss` lines; rewrites one line on a terminal. Other
    long loops name their own unit and a label: `sampling ...: image 8/64 | 0.50 images/s | ETA`."""

    def __init__(self, total_steps: int, start_step: int, *, stream=None, enabled: bool = True,
                 unit: str = "step", label: str = ""):
        self.total, self.stream, self.enabled = total_steps, stream or sys.stderr, enabled
        self.unit, self.prefix = unit, f"{label}: " if label else ""
        self.last_step, self.last_time = start_step, time.perf_counter()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, step: int, scalars: dict) -> str:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        fields = [f"{self.prefix}{self.unit} {step}/{self.total}", f"{rate:.2f} {self.unit}s/s", f"ETA {_duration(eta)}"]
        fields += [f"{k} {v:.4g}" for k, v in scalars.items()]
        line = " | ".join(fields)
        if self.enabled:
            end = "\r" if self.interactive and step < self.total else "\n"
            self.stream.write(("\x1b[2K" if self.interactive else "") + line + end)
            self.stream.flush()
        return line
