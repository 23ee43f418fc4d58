"""The UNet's and the VAE's upsampling (nearest-neighbour 2x repeat, then conv3x3;
slot_jax/models/blocks.py) as the equivalent stride-2 transposed convolution phase by phase
(`NearestUpsampleConv` on oneDNN) against the repeat and a conv3x3 over the repeated input:

  repeat    jnp.repeat twice, then the conv3x3 (oneDNN) at the doubled size: 9 taps per output pixel
  phases    the 4x4 transposed-convolution kernel whose phases are 2x2 (4 taps per output pixel),
            with the backward pass of slot_jax/models/upsample.py; the repeated input is never built

First the layers alone at the shapes the configs trace (forward, and forward + backward), then
whole train steps compiled both ways in one process and timed in alternating steps.

    python benchmarks/nearest_upsample.py [--unets quick,report] [--vaes quick,report] [--batches 32,8] [--rounds 6]

Prints the tables and appends them to benchmarks/results/nearest_upsample.jsonl.
"""
import argparse
import contextlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import compile_vae_step  # noqa: E402
from group_norm import pass_ms  # noqa: E402
from train_throughput import append_result, machine  # noqa: E402
from unet_attention import compile_step, step_inputs, timed_rows  # noqa: E402

RESULTS = HERE / "results" / "nearest_upsample.jsonl"
VARIANTS = ("repeat", "phases")
# (images per chunk, input size, C_in, C_out) of the upsampling layers as the train steps at batch
# 32 trace them: the VAEs' decoders (quick, report) and the UNets' (quick, report).
LAYERS = [(16, 16, 64, 32), (16, 32, 32, 16), (8, 32, 256, 128), (8, 64, 128, 64),
          (16, 8, 64, 64), (16, 8, 256, 256), (16, 16, 128, 128)]


@contextlib.contextmanager
def variant(name: str):
    """While tracing: the upsampling as in `name` ("repeat" keeps the conv3x3 on oneDNN)."""
    from slot_jax.models import blocks

    saved = blocks.resolve_conv_impl
    try:
        if name == "repeat":
            blocks.resolve_conv_impl = lambda *args: "repeat"
        yield
    finally:
        blocks.resolve_conv_impl = saved


def layer_rows(repeats: int) -> list:
    import jax
    import jax.numpy as jnp

    from slot_jax.models.blocks import NearestUpsampleConv

    rows = []
    for images, size, c_in, c_out in LAYERS:
        x = jax.random.normal(jax.random.PRNGKey(0), (images, size, size, c_in))
        row = {"images": images, "size": size, "c_in": c_in, "c_out": c_out}
        for name in VARIANTS:
            with variant(name):
                module = NearestUpsampleConv(c_out)
                params = module.init(jax.random.PRNGKey(1), x)
                row[f"{name}_forward_ms"], row[f"{name}_forward_backward_ms"] = pass_ms(
                    module.apply, lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), params, x, repeats=repeats)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unets", default="quick,report")
    parser.add_argument("--vaes", default="quick,report")
    parser.add_argument("--batches", default="32,8")
    parser.add_argument("--rounds", type=int, default=6, help="alternating steps of each; the first is a warm-up")
    parser.add_argument("--layer_repeats", type=int, default=10)
    args = parser.parse_args(argv)

    layers = layer_rows(args.layer_repeats) if args.layer_repeats else []
    steps_rows = []
    for kind, names in (("unet", args.unets), ("vae", args.vaes)):
        for name in filter(None, names.split(",")):
            for batch in map(int, args.batches.split(",")):
                steps = {}
                if kind == "unet":
                    config, schedule, inputs = step_inputs(name, batch)
                for label in VARIANTS:
                    with variant(label):
                        if kind == "unet":
                            steps[label] = compile_step(config, schedule, inputs)
                        else:
                            step, state, inputs = compile_vae_step(name, batch)
                            steps[label] = (step, state)
                steps_rows += timed_rows(steps, inputs, args.rounds, "repeat", "variant",
                                         step=f"{kind} {name}", batch=batch)

    print(f"{'images':>6} {'size':>4} {'c_in':>4} {'c_out':>5} {'repeat fwd':>10} {'phases fwd':>10} "
          f"{'repeat f+b':>10} {'phases f+b':>10}   (ms)")
    for r in layers:
        print(f"{r['images']:>6} {r['size']:>4} {r['c_in']:>4} {r['c_out']:>5} {r['repeat_forward_ms']:>10.2f} "
              f"{r['phases_forward_ms']:>10.2f} {r['repeat_forward_backward_ms']:>10.2f} "
              f"{r['phases_forward_backward_ms']:>10.2f}")
    print(f"\n{'step':13} {'batch':>5} {'variant':8} {'median s':>9} {'min s':>7} {'x repeat':>8} {'loss':>10}")
    for r in steps_rows:
        print(f"{r['step']:13} {r['batch']:>5} {r['variant']:8} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
              f"{r['speedup_vs_repeat']:>8.3f} {r['loss']:>10.6f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, layers=layers, steps=steps_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
