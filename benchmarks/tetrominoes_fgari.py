"""FG-ARI against training steps on built-in Tetrominoes, on the generated validation split and on
the 10 real DeepMind Tetrominoes samples (../shared/data/real).

    python benchmarks/tetrominoes_fgari.py --workdir=runs/bench_tetrominoes [--steps=6000]
        [--eval_every=500] [--variant=quick] [--config.x=y ...]

Trains with the library's own loop (resuming if the workdir has checkpoints), prints a table and
appends one JSON line with the machine to benchmarks/results/tetrominoes_fgari.jsonl.
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

    overrides = dict(arg[len("--config."):].split("=", 1) for arg in rest if arg.startswith("--config."))
    overrides.update({"train.num_steps": str(args.steps), "train.eval_every": str(args.eval_every),
                      "train.checkpoint_every": str(args.eval_every)})
    config = config_from_args(f"{CONFIG}:{args.variant}", overrides)
    if config.data.name != "tetrominoes":
        print("error: this benchmark trains on tetrominoes", file=sys.stderr)
        return 2
    started = time.perf_counter()
    train(config, args.workdir)
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
            "machine": machine(), "variant": args.variant, "overrides": overrides,
            "wall_seconds_this_run": round(elapsed, 1),
            "curve": [{"step": r["step"], **{c: r.get(c) for c in COLUMNS}} for r in evals]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
