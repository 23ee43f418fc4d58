"""The decoder's mask softmax and mixture by slot slices (slot_jax/models/over_slots.py) against
jax.nn.softmax and jnp.sum over axis 1: the mixture alone, then whole Slot Attention train steps
compiled both ways in one process and timed in alternating steps, so both see the same noise:

  axis1     jax.nn.softmax(axis=1) and jnp.sum(axis=1), as before
  mixture   mix_slots, by slot slices (the default now)

    python benchmarks/slot_reductions.py [--models small64,report128] [--batches 32,8] [--rounds 8]

Prints the tables and appends them to benchmarks/results/slot_reductions.jsonl.
"""
import argparse
import contextlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import compile_sa_step  # noqa: E402
from group_norm import median_ms  # noqa: E402
from train_throughput import append_result, image_size, machine, model_config  # noqa: E402
from unet_attention import timed_rows  # noqa: E402

RESULTS = HERE / "results" / "slot_reductions.jsonl"
VARIANTS = ("axis1", "mixture")


def axis1_mixture(x):
    import jax
    import jax.numpy as jnp
    masks = jax.nn.softmax(x[..., 3:], axis=1)
    return jnp.sum(masks * x[..., :3], axis=1), masks


@contextlib.contextmanager
def variant(name: str):
    """While tracing: the decoder's mixture as in `name`."""
    from slot_jax.models import decoder

    saved = decoder.mix_slots
    try:
        if name == "axis1":
            decoder.mix_slots = axis1_mixture
        yield
    finally:
        decoder.mix_slots = saved


def op_rows(model: str, batch: int, repeats: int) -> list:
    """The mixture alone (decoder output [B, K, H, W, 4]): forward, and forward + backward of a
    loss on the reconstruction."""
    import jax
    import jax.numpy as jnp

    from slot_jax.models.over_slots import mix_slots

    config = model_config(model, "auto/auto")
    shape = (batch, config.model.num_slots, *image_size(config), 4)
    x = jax.random.normal(jax.random.PRNGKey(0), shape) * 3.0
    row = {"op": "mixture", "model": model, "batch": batch, "shape": list(shape)}
    for label, fn in (("axis1", axis1_mixture), ("slices", mix_slots)):
        row[f"{label}_forward_ms"] = median_ms(jax.jit(fn), x, repeats=repeats)
        backward = jax.jit(jax.grad(lambda x, fn=fn: jnp.sum(jnp.sin(fn(x)[0]))))
        row[f"{label}_forward_backward_ms"] = median_ms(backward, x, repeats=repeats)
    return [row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small64,report128")
    parser.add_argument("--batches", default="32,8")
    parser.add_argument("--rounds", type=int, default=8, help="alternating steps of each; the first is a warm-up")
    parser.add_argument("--op_repeats", type=int, default=20)
    args = parser.parse_args(argv)

    ops, steps_rows = [], []
    for model in filter(None, args.models.split(",")):
        for batch in map(int, args.batches.split(",")):
            ops += op_rows(model, batch, args.op_repeats)
            steps, inputs = {}, None
            for name in VARIANTS:
                with variant(name):
                    step, state, inputs = compile_sa_step(model, batch)
                steps[name] = (step, state)
            steps_rows += timed_rows(steps, inputs, args.rounds, "axis1", "variant", model=model, batch=batch)

    print(f"{'op':8} {'model':10} {'batch':>5} {'shape':18} {'axis1 fwd':>9} {'slices fwd':>10} "
          f"{'axis1 f+b':>9} {'slices f+b':>10}   (ms)")
    for r in ops:
        print(f"{r['op']:8} {r['model']:10} {r['batch']:>5} {'x'.join(map(str, r['shape'])):18} "
              f"{r['axis1_forward_ms']:>9.2f} {r['slices_forward_ms']:>10.2f} "
              f"{r['axis1_forward_backward_ms']:>9.2f} {r['slices_forward_backward_ms']:>10.2f}")
    print(f"\n{'model':10} {'batch':>5} {'variant':8} {'median s':>9} {'min s':>7} {'x axis1':>8} {'loss':>10}")
    for r in steps_rows:
        print(f"{r['model']:10} {r['batch']:>5} {r['variant']:8} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
              f"{r['speedup_vs_axis1']:>8.3f} {r['loss']:>10.6f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, ops=ops, steps=steps_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
