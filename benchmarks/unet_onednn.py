"""The report UNet's train step with oneDNN's convolutions against XLA's Eigen ones (the `auto`
lowering with and without oneDNN, slot_jax/models/conv.py), compiled side by side in one process
and timed in alternating steps, so both see the same machine noise. Separate processes of the
same step varied by up to 15% on our VM, more than the difference measured here.

    python benchmarks/unet_onednn.py [--unet report] [--batches 8,32] [--rounds 10]

Prints the median and minimum step time of each and appends them to
benchmarks/results/unet_onednn.jsonl.
"""
import argparse
import functools
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import diffusion_speed as ds  # noqa: E402
from train_throughput import append_result, machine  # noqa: E402

RESULTS = HERE / "results" / "unet_onednn.jsonl"


def compiled_steps(unet: str, batch: int) -> tuple:
    import jax
    import jax.numpy as jnp

    from slot_jax.models import conv, unet as unet_module
    from slot_jax.models.diffusion import make_schedule
    from slot_jax.training.state import state_from_params

    config = ds.diffusion_config(unet, "auto")
    d = config.diffusion
    x0, slots = map(jnp.asarray, ds._random_inputs(config, batch))
    schedule = make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)
    steps, by_default = {}, conv.onednn_by_default
    try:
        for label, use_onednn in (("eigen", False), ("onednn", True)):
            conv.onednn_by_default = lambda use=use_onednn: use and by_default()  # read while tracing
            model, optimizer = unet_module.build_unet(config.model.unet), ds._optimizer(config)
            params = ds.host_params(model, x0[:1], jnp.zeros((1,), jnp.int32), slots[:1])
            state = state_from_params(params, optimizer, jax.random.PRNGKey(0))
            step = jax.jit(functools.partial(ds.unet_train_step, model=model, schedule=schedule, optimizer=optimizer))
            compiled = step.lower(state, x0, slots).compile()
            calls = compiled.as_text().count("__onednn$convolution")
            if use_onednn and not calls:
                raise SystemExit("oneDNN is not in use here (its probe failed, SLOT_JAX_ONEDNN=0, or several devices)")
            steps[label] = (compiled, state, calls)
    finally:
        conv.onednn_by_default = by_default
    return steps, (x0, slots)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default="report", choices=ds.UNETS)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--rounds", type=int, default=10, help="alternating steps of each; the first is a warm-up")
    args = parser.parse_args(argv)
    import jax

    rows = []
    for batch in map(int, args.batches.split(",")):
        steps, inputs = compiled_steps(args.unet, batch)
        times = {label: [] for label in steps}
        for round_index in range(args.rounds):
            for label, (step, state, _) in steps.items():
                start = time.perf_counter()
                jax.block_until_ready(step(state, *inputs)[1]["loss"])
                if round_index:
                    times[label].append(time.perf_counter() - start)
        base = statistics.median(times["eigen"])
        for label, seconds in times.items():
            rows.append({"unet": args.unet, "batch": batch, "convolutions": label, "onednn_calls": steps[label][2],
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
