"""The decoder's stride-2 transposed convolutions phase by phase (slot_jax/models/upsample.py,
`conv_transpose_by_phases`) against one sub-pixel convolution (`conv_transpose_subpixel`):

  subpixel  one convolution with s*s*C outputs (zero taps where a phase has fewer), depth-to-space,
            and autodiff's backward through both (the CPU default before)
  phases    one convolution per phase with only its taps, the input gradient as a stride-2
            convolution of the output gradient, the kernel gradient as its weight gradient

First the layers alone at the decoders' chunk shapes (forward, and forward + backward), then whole
Slot Attention train steps compiled both ways in one process and timed in alternating steps, so
both see the same noise.

    python benchmarks/transposed_conv.py [--models small64,report128] [--batches 32,8] [--rounds 8]

Prints the tables and appends them to benchmarks/results/transposed_conv.jsonl.
"""
import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import compile_sa_step  # noqa: E402
from group_norm import pass_ms  # noqa: E402
from train_throughput import append_result, machine  # noqa: E402
from unet_attention import timed_rows  # noqa: E402

RESULTS = HERE / "results" / "transposed_conv.jsonl"
VARIANTS = {"subpixel": "subpixel/auto", "phases": "phases/auto"}  # model.decoder.upsample/model.conv_impl
# (canvases per decoder chunk, input size, channels) of the 5x5 stride-2 layers: the small64
# decoder paints 16 canvases per chunk at 32 channels, report128 8 at 64 (conv.batch_chunk).
LAYERS = [(16, size, 32) for size in (8, 16, 32)] + [(8, size, 64) for size in (8, 16, 32, 64)]


def layer_rows(repeats: int) -> list:
    import jax
    import jax.numpy as jnp

    from slot_jax.models.upsample import conv_transpose_by_phases, conv_transpose_subpixel

    rows = []
    for canvases, size, channels in LAYERS:
        x = jax.random.normal(jax.random.PRNGKey(0), (canvases, size, size, channels))
        kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 5, channels, channels)) * 0.05
        row = {"canvases": canvases, "size": size, "channels": channels}
        for label, fn in (("subpixel", conv_transpose_subpixel), ("phases", conv_transpose_by_phases)):
            row[f"{label}_forward_ms"], row[f"{label}_forward_backward_ms"] = pass_ms(
                lambda x, w, fn=fn: fn(x, w, 2), lambda x, w, fn=fn: jnp.sum(jnp.sin(fn(x, w, 2))), x, kernel,
                repeats=repeats)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small64,report128")
    parser.add_argument("--batches", default="32,8")
    parser.add_argument("--rounds", type=int, default=8, help="alternating steps of each; the first is a warm-up")
    parser.add_argument("--layer_repeats", type=int, default=20)
    args = parser.parse_args(argv)

    layers = layer_rows(args.layer_repeats)
    steps_rows = []
    for model in filter(None, args.models.split(",")):
        for batch in map(int, args.batches.split(",")):
            steps, inputs = {}, None
            for name, jax_variant in VARIANTS.items():
                step, state, inputs = compile_sa_step(model, batch, jax_variant)
                steps[name] = (step, state)
            steps_rows += timed_rows(steps, inputs, args.rounds, "subpixel", "variant", model=model, batch=batch)

    print(f"{'canvases':>8} {'size':>4} {'ch':>3} {'subpixel fwd':>12} {'phases fwd':>10} "
          f"{'subpixel f+b':>12} {'phases f+b':>10}   (ms)")
    for r in layers:
        print(f"{r['canvases']:>8} {r['size']:>4} {r['channels']:>3} {r['subpixel_forward_ms']:>12.2f} "
              f"{r['phases_forward_ms']:>10.2f} {r['subpixel_forward_backward_ms']:>12.2f} "
              f"{r['phases_forward_backward_ms']:>10.2f}")
    print(f"\n{'model':10} {'batch':>5} {'variant':8} {'median s':>9} {'min s':>7} {'x subpixel':>10} {'loss':>10}")
    for r in steps_rows:
        print(f"{r['model']:10} {r['batch']:>5} {r['variant']:8} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
              f"{r['speedup_vs_subpixel']:>10.3f} {r['loss']:>10.6f}")
    append_result(RESULTS, machine=machine(), rounds=args.rounds, layers=layers, steps=steps_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
