"""FG-ARI against training steps on built-in Tetrominoes, on the generated validation split and on
the 10 real DeepMind Tetrominoes samples (../shared/data/real).

    python benchmarks/tetrominoes_fgari.py --workdir=runs/bench_tetrominoes [--steps=6000]
        [--eval_every=500] [--variant=quick] [--config.x=y ...]

Trains with the library's own loop (resuming if the workdir has checkpoints), prints a table and
appends one JSON line with the machine to benchmarks/results/tetrominoes_fgari.jsonl. Like
`python -m slot_jax.main`, it first runs itself again with the command line's memory allocator
(slot_jax/host_memory.py), so that its steps/s are the command line's. A SIGTERM or Ctrl-C saves a
checkpoint and stops with one line; the same command resumes.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "tetrominoes_fgari.jsonl"
CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "slot_attention.py"
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")  # recorded: they change steps/s
COLUMNS = ("val/decoder/fg_ari", "val/attention/fg_ari", "val/decoder/ari", "val/decoder/mbo",
           "real/decoder/fg_ari", "real/attention/fg_ari")


def machine() -> dict:
    import jax

    from slot_jax import cpu
    return {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpu": cpu.describe(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--eval_every", type=int, default=500)
    parser.add_argument("--variant", default="quick")
    args, rest = parser.parse_known_args(argv)
    from slot_jax.config_loader import config_from_args
    from slot_jax.training.loop import train
    from slot_jax.training.stopping import Stopped

    overrides = dict(arg[len("--config."):].split("=", 1) for arg in rest if arg.startswith("--config."))
    overrides.update({"train.num_steps": str(args.steps), "train.eval_every": str(args.eval_every),
                      "train.checkpoint_every": str(args.eval_every)})
    config = config_from_args(f"{CONFIG}:{args.variant}", overrides)
    if config.data.name != "tetrominoes":
        print("error: this benchmark trains on tetrominoes", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        train(config, args.workdir)
    except Stopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_status
    elapsed = time.perf_counter() - started

    rows = [json.loads(line) for line in (pathlib.Path(args.workdir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/decoder/fg_ari" in r]
    header = f"{'step':>7} " + " ".join(f"{c:>22}" for c in COLUMNS)
    print(header)
    for r in evals:
        print(f"{r['step']:>7} " + " ".join(f"{r.get(c, float('nan')):>22.4f}" for c in COLUMNS))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as file:
        file.write(json.dumps({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "allocator": {k: os.environ.get(k) for k in ALLOCATOR_VARIABLES},
            "variant": args.variant, "overrides": overrides,
            "wall_seconds_this_run": round(elapsed, 1),
            "curve": [{"step": r["step"], **{c: r.get(c) for c in COLUMNS}} for r in evals]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runs from a checkout, installed or not
    from slot_jax.errors import run_cli
    from slot_jax.host_memory import rerun_with_host_allocator
    sys.exit(run_cli(rerun_with_host_allocator) or run_cli(main))
