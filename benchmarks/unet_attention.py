"""The report UNet's train step with flax's dot-product attention against slot_jax's
(slot_jax/models/attention.py), compiled side by side in one process and timed in alternating
steps, so both see the same machine noise.

    python benchmarks/unet_attention.py [--unet report] [--batches 8,32] [--rounds 12]

Prints the median and minimum step time of each and appends them to
benchmarks/results/unet_attention.jsonl.
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

RESULTS = HERE / "results" / "unet_attention.jsonl"


def step_inputs(unet: str, batch: int) -> tuple:
    """The config of UNet variant `unet`, its noise schedule and random (x0, slots) of `batch`."""
    import jax.numpy as jnp

    from slot_jax.models.diffusion import make_schedule

    config = ds.diffusion_config(unet, "auto")
    d = config.diffusion
    schedule = make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)
    return config, schedule, tuple(map(jnp.asarray, ds._random_inputs(config, batch)))


def compile_step(config, schedule, inputs) -> tuple:
    """The UNet's train step as it is traced now, compiled ahead of time, and its initial state."""
    import jax
    import jax.numpy as jnp

    from slot_jax.models import unet as unet_module
    from slot_jax.training.state import state_from_params

    x0, slots = inputs
    model, optimizer = unet_module.build_unet(config.model.unet), ds._optimizer(config)
    params = ds.host_params(model, x0[:1], jnp.zeros((1,), jnp.int32), slots[:1])
    state = state_from_params(params, optimizer, jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(ds.unet_train_step, model=model, schedule=schedule, optimizer=optimizer))
    return step.lower(state, *inputs).compile(), state


def alternate(steps: dict, inputs, rounds: int) -> dict:
    """Seconds of each {label: (compiled step, state)}, run in turn `rounds` times; the first is a warm-up."""
    import jax

    times = {label: [] for label in steps}
    for round_index in range(rounds):
        for label, (step, state) in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(state, *inputs)[1]["loss"])
            if round_index:
                times[label].append(time.perf_counter() - start)
    return times


def timed_rows(steps: dict, inputs, rounds: int, baseline: str, label_key: str, **fields) -> list:
    """Each compiled step's loss, then `alternate`'s times as one row per label: `fields`, the
    label under `label_key`, median and minimum seconds, speed-up against `baseline`'s median."""
    losses = {label: float(step(state, *inputs)[1]["loss"]) for label, (step, state) in steps.items()}
    times = alternate(steps, inputs, rounds)
    base = statistics.median(times[baseline])
    return [{**fields, label_key: label, "median_s": statistics.median(seconds), "min_s": min(seconds),
             f"speedup_vs_{baseline}": base / statistics.median(seconds), "loss": losses[label],
             "steps_timed": len(seconds)} for label, seconds in times.items()]


def compiled_steps(unet: str, batch: int) -> tuple:
    import flax.linen as nn

    from slot_jax.models import attention, unet as unet_module

    config, schedule, inputs = step_inputs(unet, batch)
    steps = {}
    for label, attention_fn in (("flax", nn.dot_product_attention), ("slot_jax", attention.dot_product_attention)):
        unet_module.dot_product_attention = attention_fn  # looked up while the UNet is traced
        steps[label] = compile_step(config, schedule, inputs)
    unet_module.dot_product_attention = attention.dot_product_attention
    return steps, inputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default="report", choices=ds.UNETS)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--rounds", type=int, default=12, help="alternating steps of each; the first is a warm-up")
    args = parser.parse_args(argv)

    rows = []
    for batch in map(int, args.batches.split(",")):
        steps, inputs = compiled_steps(args.unet, batch)
        rows += timed_rows(steps, inputs, args.rounds, "flax", "attention", unet=args.unet, batch=batch)
    print(f"{'unet':7} {'batch':>5} {'attention':10} {'median s':>9} {'min s':>7} {'x flax':>7} {'loss':>10}")
    for r in rows:
        print(f"{r['unet']:7} {r['batch']:>5} {r['attention']:10} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
              f"{r['speedup_vs_flax']:>7.2f} {r['loss']:>10.6f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
