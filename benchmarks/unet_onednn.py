"""The report UNet's train step with oneDNN's convolutions against XLA's Eigen ones (the `auto`
lowering with and without oneDNN, slot_jax/models/conv.py), compiled side by side in one process
and timed in alternating steps, so both see the same machine noise. Separate processes of the
same step varied by up to 15% on our VM, more than the difference measured here.

    python benchmarks/unet_onednn.py [--unet report] [--batches 8,32] [--rounds 10]

Prints the median and minimum step time of each and appends them to
benchmarks/results/unet_onednn.jsonl.
"""
import argparse
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import diffusion_speed as ds  # noqa: E402
from train_throughput import append_result, machine  # noqa: E402
from unet_attention import alternate, compile_step, step_inputs  # noqa: E402

RESULTS = HERE / "results" / "unet_onednn.jsonl"


def compiled_steps(unet: str, batch: int) -> tuple:
    from slot_jax.models import conv

    config, schedule, inputs = step_inputs(unet, batch)
    steps, calls, by_default = {}, {}, conv.onednn_by_default
    try:
        for label, use_onednn in (("eigen", False), ("onednn", True)):
            conv.onednn_by_default = lambda use=use_onednn: use and by_default()  # read while tracing
            steps[label] = compile_step(config, schedule, inputs)
            calls[label] = steps[label][0].as_text().count("__onednn$convolution")
            if use_onednn and not calls[label]:
                raise SystemExit("oneDNN is not in use here (its probe failed, SLOT_JAX_ONEDNN=0, or several devices)")
    finally:
        conv.onednn_by_default = by_default
    return steps, calls, inputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default="report", choices=ds.UNETS)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--rounds", type=int, default=10, help="alternating steps of each; the first is a warm-up")
    args = parser.parse_args(argv)

    rows = []
    for batch in map(int, args.batches.split(",")):
        steps, calls, inputs = compiled_steps(args.unet, batch)
        times = alternate(steps, inputs, args.rounds)
        base = statistics.median(times["eigen"])
        for label, seconds in times.items():
            rows.append({"unet": args.unet, "batch": batch, "convolutions": label, "onednn_calls": calls[label],
                         "median_s": statistics.median(seconds), "min_s": min(seconds),
                         "speedup_vs_eigen": base / statistics.median(seconds), "steps_timed": len(seconds)})
    print(f"{'unet':7} {'batch':>5} {'convolutions':12} {'oneDNN calls':>12} {'median s':>9} {'min s':>7} {'x eigen':>8}")
    for r in rows:
        print(f"{r['unet']:7} {r['batch']:>5} {r['convolutions']:12} {r['onednn_calls']:>12} {r['median_s']:>9.3f} "
              f"{r['min_s']:>7.3f} {r['speedup_vs_eigen']:>8.2f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
