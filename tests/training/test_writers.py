"""Progress lines: the training form, other units with a label, terminals and logs."""
import io
import re

from slot_jax.training.writers import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_training_line_names_step_rate_eta_and_scalars():
    stream = io.StringIO()
    line = Progress(10, 0, stream=stream).update(4, {"loss": 0.123456})
    assert re.fullmatch(r"step 4/10 \| [\d.]+ steps/s \| ETA \d+m\d\ds \| loss 0\.1235", line), line
    assert stream.getvalue() == line + "\n"  # a log file gets whole lines


def test_other_units_carry_a_label_and_no_scalars():
    line = Progress(64, 0, stream=io.StringIO(), unit="image", label="sampling (ddpm, 1000 steps)").update(32, {})
    assert re.fullmatch(r"sampling \(ddpm, 1000 steps\): image 32/64 \| [\d.]+ images/s \| ETA \d+m\d\ds", line), line


def test_a_terminal_gets_one_rewritten_line_until_the_end():
    stream = _Terminal()
    progress = Progress(2, 0, stream=stream)
    progress.update(1, {})
    assert stream.getvalue().endswith("\r") and stream.getvalue().startswith("\x1b[2K")
    progress.update(2, {})
    assert stream.getvalue().endswith("\n")


def test_disabled_progress_writes_nothing():
    stream = io.StringIO()
    assert Progress(3, 0, stream=stream, enabled=False).update(3, {}).startswith("step 3/3")
    assert stream.getvalue() == ""
