"""slot_jax's GroupNorm (slot_jax/models/norm.py) against flax's nn.GroupNorm: each GroupNorm
layer of the UNet and VAE steps alone, then whole train steps compiled both ways in one process
and timed in alternating steps, so both see the same machine noise.

    python benchmarks/group_norm.py [--unets quick,report] [--vaes quick,report] [--batches 32,8]
                                    [--rounds 7] [--layer_repeats 20]

Prints per-layer forward and forward+backward times, step medians and minima, and appends them
to benchmarks/results/group_norm.jsonl.
"""
import argparse
import contextlib
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import compile_vae_step  # noqa: E402
from train_throughput import append_result, machine  # noqa: E402
from unet_attention import compile_step, step_inputs, timed_rows  # noqa: E402

RESULTS = HERE / "results" / "group_norm.jsonl"
MODULES = ("slot_jax.models.blocks", "slot_jax.models.unet", "slot_jax.models.vae")


@contextlib.contextmanager
def norm_class(variant: str, seen_shapes: set):
    """While tracing: the models' GroupNorm is flax's ("flax") or ours ("slot_jax"); records the
    (input shape, groups) of every GroupNorm layer traced."""
    import importlib

    import flax.linen as nn

    from slot_jax.models import norm

    class Recording(nn.GroupNorm if variant == "flax" else norm.GroupNorm):
        def __call__(self, x):
            seen_shapes.add((tuple(x.shape), self.num_groups))
            return super().__call__(x)

    modules = [importlib.import_module(name) for name in MODULES]
    saved = [module.GroupNorm for module in modules]
    try:
        for module in modules:
            module.GroupNorm = Recording
        yield
    finally:
        for module, original in zip(modules, saved):
            module.GroupNorm = original


def compiled_variants(kind: str, name: str, batch: int, shapes: set) -> tuple:
    steps, inputs = {}, None
    for variant in ("flax", "slot_jax"):
        with norm_class(variant, shapes):
            if kind == "unet":
                config, schedule, inputs = step_inputs(name, batch)
                steps[variant] = compile_step(config, schedule, inputs)
            else:
                step, state, inputs = compile_vae_step(name, batch)
                steps[variant] = (step, state)
    return steps, inputs


def median_ms(fn, *args, repeats: int) -> float:
    import jax
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def pass_ms(forward, loss, *args, repeats: int) -> tuple:
    """Median ms of jit(forward)(*args), and of jit(grad(loss)) in all of args: forward, and
    forward + backward."""
    import jax
    backward = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
    return median_ms(jax.jit(forward), *args, repeats=repeats), median_ms(backward, *args, repeats=repeats)


def layer_rows(shapes: set, repeats: int) -> list:
    """Forward and forward+backward of each GroupNorm layer alone, flax's and ours alternately."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from slot_jax.models.norm import GroupNorm

    rows = []
    for shape, groups in sorted(shapes, key=lambda s: -int(jnp.prod(jnp.array(s[0])))):
        x = jax.random.normal(jax.random.PRNGKey(0), shape) * 2.0 + 0.5
        weights = jax.random.normal(jax.random.PRNGKey(1), shape)
        row = {"shape": list(shape), "groups": groups}
        for label, module in (("flax", nn.GroupNorm(groups)), ("slot_jax", GroupNorm(groups))):
            params = module.init(jax.random.PRNGKey(0), x)
            row[f"{label}_forward_ms"], row[f"{label}_forward_backward_ms"] = pass_ms(
                module.apply, lambda p, x, m=module: jnp.sum(m.apply(p, x) * weights), params, x, repeats=repeats)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unets", default="quick,report")
    parser.add_argument("--vaes", default="quick,report")
    parser.add_argument("--batches", default="32,8")
    parser.add_argument("--rounds", type=int, default=7, help="alternating steps of each; the first is a warm-up")
    parser.add_argument("--layer_repeats", type=int, default=20)
    args = parser.parse_args(argv)

    shapes, step_rows = set(), []
    jobs = [("unet", n) for n in filter(None, args.unets.split(","))]
    jobs += [("vae", n) for n in filter(None, args.vaes.split(","))]
    for kind, name in jobs:
        for batch in map(int, args.batches.split(",")):
            steps, inputs = compiled_variants(kind, name, batch, shapes)
            step_rows += timed_rows(steps, inputs, args.rounds, "flax", "group_norm", step=kind, model=name, batch=batch)
    layers = layer_rows({s for s in shapes if s[0][0] > 1}, args.layer_repeats)  # not init's batch of 1

    print(f"{'GroupNorm input':22} {'groups':>6} {'flax fwd ms':>11} {'ours fwd ms':>11} "
          f"{'flax f+b ms':>11} {'ours f+b ms':>11} {'f+b x':>6}")
    for r in layers:
        print(f"{'x'.join(map(str, r['shape'])):22} {r['groups']:>6} {r['flax_forward_ms']:>11.3f} "
              f"{r['slot_jax_forward_ms']:>11.3f} {r['flax_forward_backward_ms']:>11.3f} "
              f"{r['slot_jax_forward_backward_ms']:>11.3f} "
              f"{r['flax_forward_backward_ms'] / r['slot_jax_forward_backward_ms']:>6.2f}")
    print(f"\n{'step':5} {'model':7} {'batch':>5} {'GroupNorm':9} {'median s':>9} {'min s':>7} {'x flax':>7} {'loss':>10}")
    for r in step_rows:
        print(f"{r['step']:5} {r['model']:7} {r['batch']:>5} {r['group_norm']:9} {r['median_s']:>9.3f} "
              f"{r['min_s']:>7.3f} {r['speedup_vs_flax']:>7.2f} {r['loss']:>10.6f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, layers=layers, steps=step_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
