"""The non-finite-step guard of the Adam update (slot_jax/training/step.py) in two forms, timed
side by side in one process with the state donated, as the train loop does:

- `where`: update every leaf, then keep the old value with `jnp.where(finite, new, old)` (the
  form before; kept here as the baseline);
- `cond`: `lax.cond(finite, update, keep)`, slot_jax's `apply_gradients_if_finite`.

    python benchmarks/nan_guard.py [--unets quick,report] [--batch 8] [--rounds 12]

For each UNet of configs/diffusion.py it times the update alone (random gradients on the UNet's
parameters) and the whole UNet train step (benchmarks/diffusion_speed.py's), alternating the two
forms, and prints median and minimum milliseconds and the speed-up of `cond` (the median over
rounds of the ratio within a round). Appends the table to benchmarks/results/nan_guard.jsonl.
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

RESULTS = HERE / "results" / "nan_guard.jsonl"


def apply_gradients_with_where(state, loss, grads, optimizer, **extra_metrics):
    """The guard as it was: all leaves updated, then the old ones kept where the step is not finite."""
    import jax
    import jax.numpy as jnp
    import optax

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1,
                              params=keep_if_finite(optax.apply_updates(state.params, updates), state.params),
                              opt_state=keep_if_finite(opt_state, state.opt_state))
    return new_state, {"loss": loss, "grad_norm": grad_norm, "update_norm": optax.tree.norm(updates),
                       "param_norm": optax.tree.norm(state.params),
                       "nonfinite": 1 - finite.astype(jnp.int32), **extra_metrics}


GUARDS = ("where", "cond")


def guard(name: str):
    """The guarded update called `name`: the baseline above, or slot_jax's own."""
    if name == "where":
        return apply_gradients_with_where
    from slot_jax.training.step import apply_gradients_if_finite
    return apply_gradients_if_finite


def compiled(unet: str, batch: int, guard_name: str) -> dict:
    """{part: (compiled function of (state, *inputs) -> (state, metrics), state, inputs)} for
    part "update" (the guarded Adam step alone) and "train step"."""
    import jax
    import jax.numpy as jnp

    from slot_jax.training import step as step_module
    from slot_jax.training.state import state_from_params

    config, schedule, (x0, slots) = step_inputs(unet, batch)
    model, optimizer = ds.build_config_unet(config), ds._optimizer(config)
    params = ds.host_params(model, x0[:1], jnp.zeros((1,), jnp.int32), slots[:1])
    grads = jax.tree.map(lambda p: 0.01 * p + 1e-3, params)
    apply = guard(guard_name)
    parts = {}

    def update(state, grads):
        return apply(state, jnp.float32(1.0), grads, optimizer)

    fresh_state = lambda: state_from_params(jax.tree.map(jnp.copy, params), optimizer, jax.random.PRNGKey(0))
    state = fresh_state()  # each part its own: a call donates (deletes) its state
    parts["update"] = (jax.jit(update, donate_argnums=0).lower(state, grads).compile(), state, (grads,))
    original = step_module.apply_gradients_if_finite
    step_module.apply_gradients_if_finite = apply  # looked up while the train step is traced
    try:
        train = jax.jit(functools.partial(ds.unet_train_step, model=model, schedule=schedule, optimizer=optimizer),
                        donate_argnums=0)
        state = fresh_state()
        parts["train step"] = (train.lower(state, x0, slots).compile(), state, (x0, slots))
    finally:
        step_module.apply_gradients_if_finite = original
    return parts


def alternate(runs: dict, rounds: int) -> dict:
    """Seconds per call of each {label: [compiled, state, inputs]}, called in turn (two calls each,
    the order reversed every round), the state carried on since it is donated; the first round warms up."""
    import jax

    times = {label: [] for label in runs}
    for round_index in range(rounds):
        for label in (list(runs) if round_index % 2 == 0 else list(runs)[::-1]):
            function, state, inputs = runs[label]
            for _ in range(2):
                start = time.perf_counter()
                state, metrics = function(state, *inputs)
                jax.block_until_ready(metrics["loss"])
                if round_index:
                    times[label].append(time.perf_counter() - start)
            runs[label][1] = state
    return times


def paired_speedup(baseline: list, seconds: list) -> float:
    """Median over rounds of baseline time / time, each round's pair of calls summed: the machine's
    speed drifts over minutes (0.8-1.2 s for the same report UNet step), a round is seconds."""
    pairs = lambda t: [t[i] + t[i + 1] for i in range(0, len(t) - 1, 2)]
    return statistics.median(b / s for b, s in zip(pairs(baseline), pairs(seconds)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unets", default="quick,report")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12, help="rounds of two calls of each; the first warms up")
    args = parser.parse_args(argv)

    rows = []
    for unet in args.unets.split(","):
        built = {name: compiled(unet, args.batch, name) for name in GUARDS}
        for part in ("update", "train step"):
            times = alternate({name: list(built[name][part]) for name in GUARDS}, args.rounds)
            rows += [{"unet": unet, "batch": args.batch, "part": part, "guard": name,
                      "median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds),
                      "speedup_vs_where": paired_speedup(times["where"], seconds), "calls_timed": len(seconds)}
                     for name, seconds in times.items()]
    print(f"{'unet':7} {'batch':>5} {'part':11} {'guard':6} {'median ms':>10} {'min ms':>8} {'x where':>8}")
    for r in rows:
        print(f"{r['unet']:7} {r['batch']:>5} {r['part']:11} {r['guard']:6} {r['median_ms']:>10.1f} "
              f"{r['min_ms']:>8.1f} {r['speedup_vs_where']:>8.2f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
