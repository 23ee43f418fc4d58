"""Train-step throughput: slot_jax's jitted step against a PyTorch eager twin of the same model.

    python benchmarks/train_throughput.py [--models small64,report128] [--batches 8,32]
        [--rounds 2] [--steps 5] [--jax_variants auto/auto+ynn,auto/auto] [--dtypes float32,bfloat16]

Each measurement runs in its own subprocess (so peak memory is that framework's alone), the
frameworks alternate, every step is timed after warm-up, and the median is kept. A float32
matmul measured in the same run gives the machine's peak. Prints a table and appends one JSON
line with the machine to benchmarks/results/train_throughput.jsonl. The matmul is measured again
before every round, and each row's share of the peak uses the matmuls measured around its steps.

Both frameworks run on JAX's default backend: on a GPU machine slot_jax runs on the GPU and the
PyTorch twin on CUDA (timed with synchronisation), and peak memory is the GPU's. `--dtypes`
times each model in float32 and/or with bfloat16 convolutions (model.compute_dtype; PyTorch runs
the same convolutions under bf16 autocast), each against a matmul of its own dtype.

A JAX variant ending in "+ynn" runs with SLOT_JAX_YNN_CONVOLUTIONS=1, i.e. with XLA:CPU's default
YNNPACK convolutions instead of the Eigen ones slot_jax selects (slot_jax/xla_cpu.py), so one run
shows both.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "train_throughput.jsonl"
CONFIG = REPO / "configs" / "slot_attention.py"
sys.path.insert(0, str(REPO))  # runs from a checkout, installed or not
YNN_SUFFIX = "+ynn"
NO_ONEDNN_SUFFIX = "+no_onednn"  # SLOT_JAX_ONEDNN=0: "auto" as it was before slot_jax called oneDNN


def strip_suffixes(jax_variant: str) -> str:
    """The variant without its environment suffixes, which may come in either order."""
    for suffix in (YNN_SUFFIX, NO_ONEDNN_SUFFIX):
        jax_variant = jax_variant.replace(suffix, "")
    return jax_variant

# name -> (config variant, overrides): the two models of issue #3's table.
MODELS = {
    "small64": ("multi_dsprites", {
        "model.num_slots": "7", "model.encoder.strides": "(1, 2, 2, 1)",
        "model.decoder.broadcast_size": "(8, 8)", "model.decoder.channels": "(32, 32, 32)",
        "model.decoder.kernel_sizes": "(5, 5, 5)", "model.decoder.strides": "(2, 2, 2)"}),
    "report128": ("report", {}),
}


def model_config(name: str, jax_variant: str = "auto/auto", dtype: str = "float32"):
    """`jax_variant` is "UPSAMPLE/CONV_IMPL", e.g. "subpixel/native" (see model.decoder.upsample and
    model.conv_impl); a bare "UPSAMPLE" keeps conv_impl=auto; a "+ynn" suffix is ignored here.
    `dtype` is model.compute_dtype."""
    from slot_jax.config_loader import config_from_args
    upsample, _, conv_impl = strip_suffixes(jax_variant).partition("/")
    variant, overrides = MODELS[name]
    return config_from_args(f"{CONFIG}:{variant}", {
        **overrides, "model.decoder.upsample": upsample, "model.conv_impl": conv_impl or "auto",
        "model.compute_dtype": dtype})


def image_size(config):
    from slot_jax.data.builtin import get_dataset
    return get_dataset(config.data.name).image_size


def forward_flops(config) -> float:
    """Multiply-adds x 2 of one image's forward pass, counting the useful work of every layer
    (a transposed convolution counts input pixels x k^2 x C_in x C_out, not its zeros)."""
    m, e, d = config.model, config.model.encoder, config.model.decoder
    h, w = image_size(config)
    flops, c_in = 0.0, 3
    for c_out, k, s in zip(e.channels, e.kernel_sizes, e.strides):
        h, w = -(-h // s), -(-w // s)
        flops += 2 * h * w * k * k * c_in * c_out
        c_in = c_out
    n = h * w
    widths = [c_in, *e.mlp_features]
    flops += sum(2 * n * a * b for a, b in zip(widths, widths[1:]))
    D, K, H = m.slot_size, m.num_slots, m.mlp_hidden
    flops += 2 * 2 * n * widths[-1] * D  # keys, values
    per_iteration = 2 * K * D * D + 2 * 2 * K * n * D + 2 * K * 6 * D * D + 2 * K * 2 * D * H
    flops += m.num_iterations * per_iteration
    bh, bw = d.broadcast_size
    c_in, per_slot = D, 0.0
    for c_out, k, s in zip(d.channels, d.kernel_sizes, d.strides):
        per_slot += 2 * bh * bw * k * k * c_in * c_out  # at the input resolution
        bh, bw, c_in = bh * s, bw * s, c_out
    per_slot += 2 * bh * bw * d.output_kernel_size ** 2 * c_in * 4
    return flops + K * per_slot


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_memory_mb(framework: str) -> float:
    """The accelerator's peak allocation when the worker ran on one, else the process's peak RSS."""
    if framework == "jax":
        import jax
        stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
    else:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def torch_device(args):
    """CUDA when the driver found JAX on a GPU (`--device gpu`), so both frameworks use the same
    chip. (The torch worker does not import JAX: JAX would take most of the GPU's memory.)"""
    import torch
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("JAX runs on a GPU but PyTorch sees no CUDA device: install a CUDA build of torch")
    return torch.device("cuda" if args.device == "gpu" else "cpu")


def driver_device() -> str:
    """The workers' device: "gpu" when JAX's default backend is a GPU, else "cpu". A driver calls
    it before any JAX computation of its own: the driver only asks JAX for its backend (and FLOP
    counts), so it must not reserve the GPU's memory, which JAX reads when it starts its client."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    return "gpu" if jax.default_backend() == "gpu" else "cpu"


# ----------------------------------------------------------------------------- workers

def jax_step(model_name: str, batch: int, jax_variant: str = "auto/auto", dtype: str = "float32") -> tuple:
    """The Slot Attention model's train step (not yet jitted), its initial state and a random batch."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from slot_jax.models.autoencoder import build_autoencoder
    from slot_jax.training.optimizer import build_optimizer
    from slot_jax.training.state import create_train_state
    from slot_jax.training.step import train_step

    config = model_config(model_name, jax_variant, dtype)
    config.train.schedule, config.train.learning_rate = "constant", 4e-4
    size = image_size(config)
    model, optimizer = build_autoencoder(config.model), build_optimizer(config.train)
    state = jax.jit(functools.partial(create_train_state, model, optimizer, (1, *size, 3)))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    images = {"image": jnp.asarray(rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8))}
    return functools.partial(train_step, model=model, optimizer=optimizer), state, images


def jax_worker(args) -> dict:
    import jax

    step, state, batch = jax_step(args.model, args.batch, args.jax_variant, args.dtype)
    step = jax.jit(step, donate_argnums=0)
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {"times": times, "loss": float(metrics["loss"])}


def torch_worker(args) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from torch_twin import SlotAutoencoder

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    device = torch_device(args)
    config = model_config(args.model, dtype=args.dtype)
    size = image_size(config)
    model = SlotAutoencoder(config.model, size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (args.batch, 3, *size), dtype=np.uint8)).to(device)
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        image = images.float() / 255.0
        loss = torch.mean((model(image) - image) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {"times": times, "loss": float(loss.detach()), "device": str(device)}


def matmul_worker(args) -> dict:
    """A square matmul in `args.dtype`: 2048^3 on the CPU, 8192^3 on a GPU. JAX's bfloat16 one
    writes float32, as slot_jax's bf16 dense layers do: XLA:CPU runs a bf16 dot that writes bf16 at
    its float32 speed (176-207 GFLOP/s on our AMD EPYC), one that writes float32 on the CPU's bf16
    dot-product instructions."""
    if args.framework == "jax":
        import jax
        import jax.numpy as jnp
        n = 2048 if jax.default_backend() == "cpu" else 8192
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n)).astype(jnp.dtype(args.dtype))
        f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
        run = lambda: jax.block_until_ready(f(a))
    else:
        import torch
        torch.set_num_threads(os.cpu_count())
        device = torch_device(args)
        n = 2048 if device.type == "cpu" else 8192
        a = torch.randn(n, n, device=device, dtype=getattr(torch, args.dtype))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        run = lambda: (a @ a, sync())
    for _ in range(3):
        run()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n ** 3 / statistics.median(times) / 1e9}


def worker_main(args) -> None:
    if args.matmul:
        result = matmul_worker(args)
    elif args.framework == "jax":
        result = jax_worker(args)
    else:
        result = torch_worker(args)
    result["peak_rss_mb"] = peak_memory_mb(args.framework)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver

def worker_env(jax_variant: str) -> dict:
    """The environment of a worker: a "+ynn" variant keeps XLA's YNNPACK convolutions, a
    "+no_onednn" one turns oneDNN off (SLOT_JAX_ONEDNN=0). (This process imported slot_jax, which
    put its flag into XLA_FLAGS: the child must not inherit it.) Workers of both frameworks get the
    allocator that `python -m slot_jax.main` would run with (jemalloc where installed, else huge
    pages; see slot_jax/host_memory.py); SLOT_JAX_ALLOCATOR=off keeps the driver's environment."""
    from slot_jax import host_memory, onednn, xla_cpu
    # Nor the driver's XLA_PYTHON_CLIENT_PREALLOCATE (see driver_device): JAX workers allocate as usual.
    env = {k: v for k, v in os.environ.items()
           if k not in (xla_cpu.OPT_OUT, onednn.SWITCH, "XLA_PYTHON_CLIENT_PREALLOCATE")}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f != xla_cpu.FLAG)
    env = host_memory.host_environment(env) or env
    if YNN_SUFFIX in jax_variant:
        env[xla_cpu.OPT_OUT] = "1"
    if NO_ONEDNN_SUFFIX in jax_variant:
        env[onednn.SWITCH] = "0"
    return env


def allocator_note() -> None:
    """Prints slot_jax's note where the workers would run on an allocator that the command line
    would not choose as it stands (jemalloc preloaded without MALLOC_CONF): the JSON lines record
    the allocator, but a driver started from such a shell should say so before its first worker."""
    from slot_jax import host_memory
    note = host_memory.allocator_plan(os.environ)[1]
    if note:
        print(note, flush=True)


def run_worker(*extra, script=__file__, env=None) -> dict:
    """Runs `script --worker *extra` in a fresh process (this file's workers by default) and returns
    the dict it prints on its RESULT line."""
    out = subprocess.run([sys.executable, str(script), "--worker", *extra], capture_output=True, text=True,
                         cwd=REPO, timeout=3600, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {extra} failed:\n{out.stderr[-3000:]}")


def machine() -> dict:
    import jax

    from slot_jax import cpu
    info = {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpu": cpu.describe(), "python": platform.python_version(),
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(), "jax_devices": [d.device_kind for d in jax.devices()],
            "jaxlib": __import__("jaxlib").__version__}
    from slot_jax import host_memory
    workers = host_memory.host_environment(os.environ) or os.environ  # the allocator changes the timings
    for variable in ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF"):
        if workers.get(variable):
            info[variable.lower()] = workers[variable]
    if jax.default_backend() == "cpu":  # whether conv_impl=auto can call oneDNN here (+no_onednn runs turn it off)
        from slot_jax import onednn
        info["onednn_usable"] = onednn.available()
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def append_result(path: pathlib.Path, **record) -> None:
    """Appends one JSON line to `path`: the time, the commit, then `record`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    with path.open("a") as file:
        file.write(json.dumps({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, **record}) + "\n")


def torch_bf16_skip_reason(device: str, description: dict | None = None):
    """Why PyTorch's bfloat16 is not timed here, or None: on a CPU without native bf16 dot products
    its bf16 matmul ran at about 1 GFLOP/s (AVX2 AMD EPYC, torch 2.14), so a bf16 step would take
    hours and tell nothing. slot_jax's bf16 is still timed (1.25-1.75x slower than float32 there)."""
    if device != "cpu":
        return None
    from slot_jax import cpu
    description = description or cpu.describe()
    if cpu.has_native_bf16(description):
        return None
    return (f"PyTorch bfloat16 not timed: this CPU ({description['model']}) has no native bf16 dot products "
            f"({'/'.join(cpu.NATIVE_BF16_FLAGS)}), where PyTorch's bf16 matmul runs at about 1 GFLOP/s")


def _dtype_tag(dtype: str) -> str:
    return "" if dtype == "float32" else "/bf16"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", default="jax", choices=("jax", "torch"))
    parser.add_argument("--model", default="small64", choices=tuple(MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--jax_variant", default="auto/auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default="small64,report128")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--jax_variants", default="auto/auto+ynn,auto/auto",
                        help="comma-separated UPSAMPLE/CONV_IMPL pairs to time, e.g. transpose/native, "
                             "subpixel/im2col, auto/auto (the default the configs use); a +ynn suffix "
                             "keeps XLA's YNNPACK convolutions")
    parser.add_argument("--dtypes", default="float32",
                        help="comma-separated compute dtypes to time: float32, bfloat16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS, help="JSON-lines file to append to")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    device = driver_device()
    allocator_note()
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", device]
    dtypes = args.dtypes.split(",")
    torch_dtypes = dtypes
    skip_reason = torch_bf16_skip_reason(device) if "bfloat16" in dtypes else None
    if skip_reason:
        print(skip_reason)
        torch_dtypes = [d for d in dtypes if d != "bfloat16"]
    pairs = [(fw, dtype) for fw, fw_dtypes in (("jax", dtypes), ("torch", torch_dtypes)) for dtype in fw_dtypes]

    def measure_peaks() -> dict:
        return {pair: run_worker("--matmul", "--framework", pair[0], "--dtype", pair[1], "--device", device,
                                 env=worker_env(""))["gflops"] for pair in pairs}

    # The VM's speed drifts by 20-30% over minutes, so the matmul is measured again before every
    # round, and each row's "% of peak" uses the matmuls measured around its own steps.
    samples = {pair: [] for pair in pairs}
    for pair, value in measure_peaks().items():
        samples[pair].append(value)
    for dtype in dtypes:
        print(f"{dtype} matmul: jax {samples['jax', dtype][0]:.0f} GFLOP/s, "
              f"torch {samples.get(('torch', dtype), [float('nan')])[0]:.0f} GFLOP/s")
    rows = []
    for name in args.models.split(","):
        flops = 3 * forward_flops(model_config(name))  # forward + backward ~ 3x forward
        for batch in map(int, args.batches.split(",")):
            # (label, framework, jax variant, dtype)
            entries = [(f"torch{_dtype_tag(d)}", "torch", "auto/auto", d) for d in torch_dtypes] + [
                (f"jax/{v}{_dtype_tag(d)}", "jax", v, d) for v in args.jax_variants.split(",") for d in dtypes]
            times, local = {}, {pair: [] for pair in pairs}
            for round_index in range(args.rounds):
                if rows or times:  # the first round of the run follows the measurement above
                    for pair, value in measure_peaks().items():
                        samples[pair].append(value)
                local = {pair: local[pair] + [samples[pair][-1]] for pair in pairs}
                order = entries if round_index % 2 == 0 else entries[::-1]
                for label, framework, variant, dtype in order:
                    result = run_worker("--framework", framework, "--model", name, "--batch", str(batch),
                                        "--jax_variant", variant, "--dtype", dtype, *common, env=worker_env(variant))
                    slot = times.setdefault(label, {"times": [], "peak_rss_mb": 0.0, "framework": framework,
                                                    "dtype": dtype})
                    slot["times"] += result["times"]
                    slot["peak_rss_mb"] = max(slot["peak_rss_mb"], result["peak_rss_mb"])
            for label, slot in times.items():
                seconds = statistics.median(slot["times"])
                torch_slot = times.get(f"torch{_dtype_tag(slot['dtype'])}")
                torch_s = statistics.median(torch_slot["times"]) if torch_slot else None
                gflops = flops * batch / seconds / 1e9
                peak = statistics.median(local[slot["framework"], slot["dtype"]])
                row = {"model": name, "batch": batch, "impl": label, "dtype": slot["dtype"],
                       "s_per_step": seconds, "images_per_s": batch / seconds,
                       "vs_torch": None if torch_s is None else torch_s / seconds,
                       "gflops": gflops, "matmul_gflops": peak, "pct_matmul_peak": 100 * gflops / peak,
                       "peak_rss_mb": slot["peak_rss_mb"], "step_gflop": flops * batch / 1e9}
                if "float32" in dtypes:  # every row also against PyTorch's and the matmul's float32
                    row["vs_torch_float32"] = statistics.median(times["torch"]["times"]) / seconds
                    row["pct_float32_matmul_peak"] = 100 * gflops / statistics.median(local[slot["framework"],
                                                                                            "float32"])
                rows.append(row)
    memory = "RSS MB" if device == "cpu" else "GPU MB"
    # x torch: against PyTorch in the row's dtype; x f32 torch and % f32 peak: against PyTorch's
    # float32 step and the float32 matmul (when float32 was timed too).
    # peak: the median matmul GFLOP/s measured before the row's rounds, in the row's framework and dtype.
    print(f"{'model':10} {'batch':>5} {'impl':23} {'s/step':>8} {'img/s':>8} {'x torch':>8} {'x f32 torch':>11} "
          f"{'GFLOP/s':>8} {'peak':>6} {'% peak':>7} {'% f32 peak':>10} {memory:>8}")
    nan = float("nan")
    for r in rows:
        vs_torch = nan if r["vs_torch"] is None else r["vs_torch"]
        print(f"{r['model']:10} {r['batch']:>5} {r['impl']:23} {r['s_per_step']:>8.3f} {r['images_per_s']:>8.1f} "
              f"{vs_torch:>8.2f} {r.get('vs_torch_float32', nan):>11.2f} {r['gflops']:>8.1f} "
              f"{r['matmul_gflops']:>6.0f} {r['pct_matmul_peak']:>7.1f} {r.get('pct_float32_matmul_peak', nan):>10.1f} "
              f"{r['peak_rss_mb']:>8.0f}")
    extra = {"torch_bf16_skipped": skip_reason} if skip_reason else {}
    append_result(args.results, machine=machine(), **extra,
                  matmul_gflops={f"{fw}/{d}": statistics.median(v) for (fw, d), v in samples.items()},
                  matmul_gflops_samples={f"{fw}/{d}": v for (fw, d), v in samples.items()},
                  steps=args.steps, rounds=args.rounds, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
