"""Convolution kernels layer by layer: XLA:CPU's Eigen and YNNPACK convolutions against PyTorch.

    python benchmarks/conv_kernels.py [--rounds 2] [--repeats 3] [--impls torch,jax/eigen,...]

Times forward + backward (gradients of the input and the kernel, of sum(y^2)) of the convolutions
that dominate the project's train steps, at their real shapes. Three workers, each in its own
process, alternating over the rounds: JAX with the Eigen convolutions that `import slot_jax`
selects (slot_jax/xla_cpu.py), JAX with XLA's default YNNPACK ones (SLOT_JAX_YNN_CONVOLUTIONS=1),
PyTorch eager (NCHW Conv2d, its default), and PyTorch with channels-last tensors, where oneDNN
runs its NHWC kernels, the fastest convolutions we know of on this CPU. The Eigen worker also times each layer through
`conv2d(..., impl="auto")`, i.e. with the gradient lowering slot_jax picks for it (phase_grad,
swap_wgrad or native; slot_jax/models/conv.py). Every layer is timed after one warm-up call; the
best of --repeats calls in each round, then the best over rounds, is kept. Prints a table and
appends one JSON line with the machine to benchmarks/results/conv_kernels.jsonl.

Fresh large tensors cost a page fault per 4 KiB on first touch, which inflates layers timed alone
(not in a train step, where XLA and PyTorch reuse memory more): run it under
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, as `python -m slot_jax.main` runs, to time the kernels
(the machine record keeps the tunable).
"""
import argparse
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_throughput import append_result, machine, run_worker, worker_env  # noqa: E402

RESULTS = HERE / "results" / "conv_kernels.jsonl"

# name: (batch, size, c_in, c_out, kernel, stride). Batches of the Slot Attention decoder are
# images x slots (32 x 7 = 224, the small64 model of train_throughput.py at batch 32).
LAYERS = {
    "SA decoder 8->16 (sub-pixel 32->4x32)": (224, 8, 32, 128, 3, 1),
    "SA decoder 16->32 (sub-pixel)": (224, 16, 32, 128, 3, 1),
    "SA decoder 32->64 (sub-pixel)": (224, 32, 32, 128, 3, 1),
    "SA decoder output (RGB + mask)": (224, 64, 32, 4, 3, 1),
    "SA encoder RGB input": (32, 64, 3, 32, 5, 1),
    "SA encoder stride 2": (32, 64, 32, 32, 5, 2),
    "UNet report 32x32, 64 ch": (32, 32, 64, 64, 3, 1),
    "UNet report 16x16, 128 ch": (32, 16, 128, 128, 3, 1),
}
# The PyTorch twin (torch_twin.py) upsamples with ConvTranspose2d instead of the sub-pixel layers
# above: timed by the PyTorch workers only, for comparison with the "(sub-pixel)" rows.
TRANSPOSED = {
    "SA decoder 8->16, twin's ConvTranspose2d": (224, 8, 32, 32, 5, 2),
    "SA decoder 16->32, twin's ConvTranspose2d": (224, 16, 32, 32, 5, 2),
    "SA decoder 32->64, twin's ConvTranspose2d": (224, 32, 32, 32, 5, 2),
}
IMPLS = ("torch", "torch/channels_last", "jax/eigen", "jax/ynn")
AUTO = "jax/eigen, conv_impl=auto"  # timed by the jax/eigen worker
IMPL_KEYS = {"torch": "torch_s", "torch/channels_last": "torch_channels_last_s", "jax/eigen": "jax_eigen_s",
             "jax/ynn": "jax_ynn_s"}  # keys of the results file


def flops(batch, size, c_in, c_out, kernel, stride) -> float:
    """Forward + backward (3x the forward's multiply-adds x 2)."""
    return 3 * 2 * batch * (size // stride) ** 2 * kernel * kernel * c_in * c_out


def _best(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def phase_times(conv, x, w, repeats: int) -> dict:
    """Seconds of the forward pass, the input gradient and the weight gradient, each jitted alone."""
    import jax
    forward = jax.jit(conv)
    dy = jax.random.normal(jax.random.PRNGKey(2), forward(x, w).shape)
    input_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    weight_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    return {"forward": _best(lambda: jax.block_until_ready(forward(x, w)), repeats),
            "input_grad": _best(lambda: jax.block_until_ready(input_grad(x, w, dy)), repeats),
            "weight_grad": _best(lambda: jax.block_until_ready(weight_grad(x, w, dy)), repeats)}


def jax_worker(repeats: int, phases: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from slot_jax import xla_cpu
    from slot_jax.models.conv import conv2d, resolve_conv_impl

    eigen = xla_cpu.eigen_convolutions()
    times, auto_times, auto_impls, phase = {}, {}, {}, {}
    for name, (batch, size, c_in, c_out, k, stride) in LAYERS.items():
        x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, c_in))
        w = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (k, k, c_in, c_out))
        pads = [(k // 2, k // 2)] * 2

        def loss(x, w):
            y = lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(y ** 2)

        def auto_loss(x, w):  # the lowering conv_impl=auto picks (slot_jax/models/conv.py)
            return jnp.sum(conv2d(x, w, stride, pads, "auto") ** 2)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        times[name] = _best(lambda: jax.block_until_ready(grad(x, w)), repeats)
        if eigen:
            auto_impls[name] = resolve_conv_impl("auto", c_in, c_out, stride, k, size)
            auto_grad = jax.jit(jax.grad(auto_loss, argnums=(0, 1)))
            auto_times[name] = _best(lambda: jax.block_until_ready(auto_grad(x, w)), repeats)
        if phases:
            phase[name] = {impl: phase_times(lambda x, w: conv2d(x, w, stride, pads, impl), x, w, repeats)
                           for impl in ("native", "auto")}
    return {"times": times, "auto_times": auto_times, "auto_impls": auto_impls, "eigen": eigen, "phases": phase}


def torch_worker(repeats: int, channels_last: bool) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    times = {}
    for name, (batch, size, c_in, c_out, k, stride) in {**LAYERS, **TRANSPOSED}.items():
        if name in TRANSPOSED:  # output = stride x input, as the twin's decoder
            conv = torch.nn.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=k // 2, output_padding=stride - 1)
        else:
            conv = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)
        conv = conv.to(memory_format=layout)
        x = torch.randn(batch, c_in, size, size).to(memory_format=layout).requires_grad_(True)

        def run():
            conv.zero_grad(set_to_none=True)
            x.grad = None
            conv(x).pow(2).sum().backward()

        times[name] = _best(run, repeats)
    return {"times": times}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="jax/eigen", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", action="store_true",
                        help="also time forward, input gradient and weight gradient alone, native and auto (jax/eigen)")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help=f"comma-separated subset of {', '.join(IMPLS)}; jax/eigen is always run")
    args = parser.parse_args(argv)
    if args.worker:
        if args.impl.startswith("torch"):
            result = torch_worker(args.repeats, channels_last=args.impl == "torch/channels_last")
        else:
            result = jax_worker(args.repeats, args.phases)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    impls = [impl for impl in IMPLS if impl in {*args.impls.split(","), "jax/eigen"}]
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown:
        parser.error(f"unknown --impls {', '.join(sorted(unknown))}: choose from {', '.join(IMPLS)}")

    best = {impl: {} for impl in (*impls, AUTO)}
    auto_impls, phases = {}, {}
    for round_index in range(args.rounds):
        for impl in impls if round_index % 2 == 0 else impls[::-1]:
            print(f"  {impl} (round {round_index + 1})", flush=True)
            variant = "+ynn" if impl == "jax/ynn" else ""
            result = run_worker("--impl", impl, "--repeats", str(args.repeats),
                                *(["--phases"] if args.phases and impl == "jax/eigen" else []),
                                script=__file__, env=worker_env(variant))
            if impl.startswith("jax") and result["eigen"] != (impl == "jax/eigen"):
                raise RuntimeError(f"{impl} worker ran with the wrong convolutions (eigen={result['eigen']})")
            for name, seconds in result["times"].items():
                best[impl][name] = min(best[impl].get(name, float("inf")), seconds)
            for name, by_impl in result.get("phases", {}).items():
                layer = phases.setdefault(name, {})
                for key, seconds in ((f"{i}/{p}", t) for i, ts in by_impl.items() for p, t in ts.items()):
                    layer[key] = min(layer.get(key, float("inf")), seconds)
            for name, seconds in result.get("auto_times", {}).items():
                best[AUTO][name] = min(best[AUTO].get(name, float("inf")), seconds)
                auto_impls[name] = result["auto_impls"][name]
    rows = []
    torch_impls = [impl for impl in impls if impl.startswith("torch")]
    columns = {"torch": "torch", "torch/channels_last": "torch NHWC", "jax/eigen": "eigen", "jax/ynn": "ynn"}
    print(f"{'layer':40} {'shape':28} " + " ".join(f"{columns[i] + ' s':>12}" for i in impls)
          + f" {'auto s':>8} {'auto is':>11} {'eigen GF/s':>10} {'best other / auto':>17}")
    for name, shape in LAYERS.items():
        seconds = {impl: best[impl][name] for impl in impls}
        a = best[AUTO][name]
        batch, size, c_in, c_out, k, stride = shape
        eigen_gflops = flops(*shape) / seconds["jax/eigen"] / 1e9
        others = [seconds[i] for i in torch_impls]
        row = {"layer": name, "shape": shape, "jax_auto_s": a, "auto_impl": auto_impls[name],
               "eigen_gflops": eigen_gflops}
        row.update({IMPL_KEYS[impl]: t for impl, t in seconds.items()})
        rows.append(row)
        print(f"{name:40} {f'{batch}x{size}x{size} {c_in}->{c_out} k{k} s{stride}':28} "
              + " ".join(f"{seconds[i]:>12.3f}" for i in impls)
              + f" {a:>8.3f} {auto_impls[name]:>11} {eigen_gflops:>10.0f} "
              + (f"{min(others) / a:>17.2f}" if others else f"{'-':>17}"))
    print("best other / auto: the fastest PyTorch layout's time over slot_jax's (conv_impl=auto); "
          "above 1 slot_jax is faster")
    for name, shape in TRANSPOSED.items() if torch_impls else ():
        batch, size, c_in, c_out, k, stride = shape
        seconds = {impl: best[impl][name] for impl in torch_impls}
        rows.append({"layer": name, "shape": shape, **{IMPL_KEYS[impl]: t for impl, t in seconds.items()}})
        print(f"{name:40} {f'{batch}x{size}x{size} {c_in}->{c_out} k{k} s{stride}':28} "
              + " ".join(f"{seconds[i]:>12.3f}" for i in torch_impls))
    if phases:
        keys = [f"{i}/{p}" for i in ("native", "auto") for p in ("forward", "input_grad", "weight_grad")]
        print("\nalone, ms (jax/eigen worker): " + ", ".join(keys))
        for name, row in zip(LAYERS, rows):
            row["phases_s"] = phases[name]
            print(f"{name:40} " + " ".join(f"{1e3 * phases[name][key]:>8.1f}" for key in keys))
    append_result(RESULTS, machine=machine(), rounds=args.rounds, repeats=args.repeats, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
