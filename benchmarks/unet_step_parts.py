"""Where the UNet train step's time goes, by ablation: the step of diffusion_speed.py and three
truncations of it, compiled side by side in one process and timed in alternating rounds.

    python benchmarks/unet_step_parts.py [--unet report] [--batch 8] [--rounds 6]

- forward: the loss alone;
- input gradients: the loss's gradient with respect to the latents only (the parameters held
  constant), i.e. the forward and every layer's input gradient, but no weight gradient;
- gradients: the gradient with respect to the parameters (adds the weight gradients);
- train step: gradients plus the guarded Adam update.

Differences between rows give each part's cost. Prints median and minimum seconds and appends
them to benchmarks/results/unet_step_parts.jsonl.
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
from unet_attention import step_inputs  # noqa: E402

RESULTS = HERE / "results" / "unet_step_parts.jsonl"


def parts(unet: str, batch: int) -> tuple:
    """{label: compiled function of (state, x0, slots)}, the initial state and the inputs."""
    import jax
    import jax.numpy as jnp

    from slot_jax.training.state import state_from_params

    config, schedule, (x0, slots) = step_inputs(unet, batch)
    model, optimizer = ds.build_config_unet(config), ds._optimizer(config)
    params = ds.host_params(model, x0[:1], jnp.zeros((1,), jnp.int32), slots[:1])
    state = state_from_params(params, optimizer, jax.random.PRNGKey(0))

    def loss(params, x0, slots):  # the train step's loss, with its noise
        rng = jax.random.fold_in(state.rng, state.step)
        return ds.unet_loss(params, x0, slots, rng, model=model, schedule=schedule)

    functions = {
        "forward": lambda s, x0, slots: loss(s.params, x0, slots),
        "input gradients": lambda s, x0, slots: jax.grad(loss, argnums=1)(jax.lax.stop_gradient(s.params), x0, slots),
        "gradients": lambda s, x0, slots: jax.grad(loss)(s.params, x0, slots),
        # Not donated, unlike training: every row reads the same state.
        "train step": functools.partial(ds.unet_train_step, model=model, schedule=schedule, optimizer=optimizer),
    }
    return {label: jax.jit(f).lower(state, x0, slots).compile() for label, f in functions.items()}, state, (x0, slots)


def main(argv=None) -> int:
    import jax

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default="report", choices=ds.UNETS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of two calls of each, order reversed every round")
    args = parser.parse_args(argv)

    compiled, state, inputs = parts(args.unet, args.batch)
    times = {label: [] for label in compiled}
    for label, f in compiled.items():
        jax.block_until_ready(f(state, *inputs))  # warm-up
    for round_index in range(args.rounds):
        for label in (list(compiled) if round_index % 2 == 0 else list(compiled)[::-1]):
            for _ in range(2):
                start = time.perf_counter()
                jax.block_until_ready(compiled[label](state, *inputs))
                times[label].append(time.perf_counter() - start)
    rows, previous = [], 0.0
    for label, seconds in times.items():
        median = statistics.median(seconds)
        rows.append({"unet": args.unet, "batch": args.batch, "part": label, "median_s": median,
                     "min_s": min(seconds), "added_s": median - previous, "calls_timed": len(seconds)})
        previous = median
    print(f"{'unet':7} {'batch':>5} {'up to':16} {'median s':>9} {'min s':>7} {'added s':>8}")
    for r in rows:
        print(f"{r['unet']:7} {r['batch']:>5} {r['part']:16} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['added_s']:>8.3f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
