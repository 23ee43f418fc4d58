"""Diffusion speed: the slot-conditioned UNet's train step, JAX against a PyTorch eager twin, and
the samplers' images/s in JAX.

    python benchmarks/diffusion_speed.py [--part train,sampling] [--quick]
        train:    [--unets quick,report] [--batches 8,32] [--jax_variants auto+ynn,auto,auto+bf16]
                  [--torch_bf16] [--rounds 2] [--steps 4] [--warmup 2] [--full_step] [--no_compile_cache]
        sampling: [--sample_runs quick:ddpm:1000,quick:ddim:50,...] [--sample_batch 8]
                  [--sample_warmup_below 5] [--sample_repeats 1] [--sample_variant auto]

--part train: one step of the UNet of configs/diffusion.py:quick (16x16x3 latents, 6 slots of 32)
and :report (32x32x3 latents, 11 slots of 64): forward, backward and Adam (lr 4e-4, constant) on
the epsilon-MSE at uniformly random t, noise drawn anew each step, on fixed random latents and
random slots. JAX runs the project's step pattern, jitted with the state donated (the update
through training.step.apply_gradients_if_finite, which also takes the gradient and update
norms), once per conv lowering in --jax_variants (`auto`, what the configs use, `native`, XLA's
own convolution, ...; a "+ynn" suffix keeps XLA's YNNPACK convolutions instead of the Eigen ones
slot_jax selects, see slot_jax/xla_cpu.py; "+bf16" computes the convolutions and the UNet's dense
layers in bfloat16, "+bf16+f32_dense" only the convolutions); PyTorch
runs benchmarks/torch_unet_twin.py eagerly with torch.optim.Adam (and with --torch_bf16 also under
bfloat16 autocast, "torch/bf16"). The twin computes the same function
(tests/models/test_torch_unet_twin.py), so the two do equal work. JAX/torch is against PyTorch's
float32 step.
--full_step adds, JAX only, the whole slot-diffusion step of training/diffusion_step.py (CNN
encoder + Slot Attention on the dataset's images, a randomly initialised frozen VAE encoder, the
UNet): not comparable to the UNet-only rows, so its JAX/torch column is left empty. JAX's weights
are LeCun-normal draws made with numpy from the parameter shapes (no init to compile), torch's
those of torch_twin.init_like_flax; the values do not change the speed.

--part sampling: one full jitted `slot_jax.models.diffusion.sample` call (the whole chain in one
lax.scan; the compile, ahead of time, is reported separately) with the config's noise schedule and
a UNet of random weights conditioned on random slots; eta = 0 for DDIM. By default the quick UNet
runs DDPM with 1000 steps, DDIM with 50 and 25, and DPM-Solver++(2M) with 25, and the report UNet
only the 50- and 25-step samplers: its forward pass is 3.7 GFLOP per latent against the quick
UNet's 0.15 (25x), so its DDPM-1000 at batch 8 would take some 6-10 minutes on a 2-core CPU by
itself. Add report:ddpm:1000 to --sample_runs for it. The first call after the compile costs
~0.1-0.2 s more than later ones: when it takes under 5 s (--sample_warmup_below) it counts as a
warm-up and a second call is timed, otherwise it is the timed call (the extra is then under 4%).

Every measurement runs in its own subprocess (so its peak RSS is that framework's alone); in the
train part the implementations alternate over --rounds, each times --steps steps after --warmup
and the median step is kept; rounds after the first load round 1's JAX executables from a temporary
XLA cache (--no_compile_cache to compile every time; jaxlib 0.10.2 cannot serialise a program
that calls oneDNN, so those compile every round anyway), and the JAX peak RSS includes the compile
(~0.4 GB of it for the quick UNet). A float32 2048^3 matmul measured in the same run gives the machine's
peak (train_throughput.py's worker), the FLOPs come from XLA's cost analysis of the forward pass
with native convolutions (x3 for a train step). Prints markdown tables and appends one JSON line
with the machine to benchmarks/results/diffusion_speed.jsonl. The defaults take about 10-15
minutes on a 2-core x86 CPU; --quick is a ~2-minute smoke test (small batches, few steps).
"""
import argparse
import functools
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "diffusion_speed.jsonl"
CONFIG = REPO / "configs" / "diffusion.py"
sys.path.insert(0, str(REPO))  # runs from a checkout, installed or not
sys.path.insert(0, str(HERE))
from train_throughput import (allocator_note, append_result, strip_suffixes, driver_device,  # noqa: E402
                              image_size, machine, peak_memory_mb, run_worker, torch_bf16_skip_reason,
                              torch_device, worker_env)

UNETS = ("quick", "report")  # variants of configs/diffusion.py
SAMPLE_RUNS = ("quick:ddpm:1000,quick:ddim:50,quick:ddim:25,quick:dpm_solver++:25,"
               "report:ddim:50,report:ddim:25,report:dpm_solver++:25")
QUICK_DEFAULTS = dict(unets="quick", batches="8", rounds=1, steps=2, warmup=1,
                      sample_runs="quick:ddpm:100,quick:ddim:10,quick:dpm_solver++:10")
LEARNING_RATE = 4e-4


BF16_SUFFIX = "+bf16"  # the convolutions and the UNet's dense layers compute in bfloat16
# Beside +bf16: the UNet's dense layers stay float32, as before slot_jax/models/dense.py.
F32_DENSE_SUFFIX = "+f32_dense"


def diffusion_config(unet: str, conv_impl: str = "auto"):
    from slot_jax.config_loader import config_from_args
    dtype = "bfloat16" if BF16_SUFFIX in conv_impl else "float32"
    conv_impl = strip_suffixes(conv_impl.replace(BF16_SUFFIX, "").replace(F32_DENSE_SUFFIX, ""))
    return config_from_args(f"{CONFIG}:{unet}", {
        "model.unet.conv_impl": conv_impl, "model.conv_impl": conv_impl, "vae.model.conv_impl": conv_impl,
        "model.compute_dtype": dtype})


def build_config_unet(config, jax_variant: str = ""):
    """The config's UNet, computing in the config's model.compute_dtype (its dense layers in
    float32 for a +f32_dense variant)."""
    from slot_jax.models import dense
    from slot_jax.models.autoencoder import compute_dtype
    from slot_jax.models.unet import build_unet
    dense.LOW_PRECISION_DENSE = F32_DENSE_SUFFIX not in jax_variant  # read while the UNet is traced
    return build_unet(config.model.unet, compute_dtype(config.model))


def latent_shape(config) -> tuple:
    """(h, w, C) of the VAE latents the UNet denoises: the image size over the VAE's downsampling."""
    factor = 2 ** (len(config.vae.model.channels) - 1)
    height, width = image_size(config)
    return height // factor, width // factor, config.vae.model.latent_channels


def unet_forward_flops(unet: str) -> float:
    """XLA's FLOP count of one latent's UNet forward pass with native convolutions (no compile)."""
    import jax
    import jax.numpy as jnp

    from slot_jax.models.unet import build_unet
    config = diffusion_config(unet, "native")
    m = config.model
    model = build_unet(m.unet)
    x_t = jnp.zeros((1, *latent_shape(config)))
    t, slots = jnp.zeros((1,), jnp.int32), jnp.zeros((1, m.num_slots, m.slot_size))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x_t, t, slots)
    cost = jax.jit(model.apply).lower(params, x_t, t, slots).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else float("nan")


# ----------------------------------------------------------------------------- workers

def _random_inputs(config, batch: int, seed: int = 0):
    """Fixed random latents x0 [B,h,w,C] and slots [B,K,D] as numpy float32."""
    import numpy as np
    rng = np.random.default_rng(seed)
    m = config.model
    x0 = rng.normal(size=(batch, *latent_shape(config))).astype(np.float32)
    slots = rng.normal(size=(batch, m.num_slots, m.slot_size)).astype(np.float32)
    return x0, slots


def host_params(model, *inputs, seed: int = 0):
    """Parameters of `model` (a Flax module applied to `inputs`) drawn with numpy from its
    parameter shapes: LeCun-normal kernels (attention q/k/v kernels are [in, heads, head_dim]),
    zero biases, unit norm scales. Speed does not depend on the values; this spares each worker
    compiling `model.init` (~20 s for the report UNet on a 2-core CPU)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = shape[0] if len(shape) == 3 and path[-2].key != "out" else np.prod(shape[:-1])
            return jnp.asarray(rng.normal(size=shape) / np.sqrt(fan_in), jnp.float32)
        return jnp.full(shape, 1.0 if name == "scale" else 0.0, jnp.float32)

    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), *inputs)["params"]
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _optimizer(config):
    from slot_jax.training.optimizer import build_optimizer
    train = config.train
    train.schedule, train.learning_rate, train.grad_clip_norm = "constant", LEARNING_RATE, 0.0  # = torch Adam
    return build_optimizer(train)


def unet_loss(params, x0, slots, rng, *, model, schedule):
    """The epsilon-prediction loss of the UNet `model` with `params` on latents x0 and slots."""
    import jax.numpy as jnp

    from slot_jax.models import diffusion
    t, noise, x_t = diffusion.sample_training_inputs(schedule, x0, rng)
    output = model.apply({"params": params}, x_t, t, slots)
    target = diffusion.training_target(schedule, x0, t, noise, "epsilon")
    return jnp.mean(diffusion.per_example_mse(output, target))


def unet_train_step(state, x0, slots, *, model, schedule, optimizer):
    """The UNet part of training.diffusion_step.diffusion_train_step, on given latents and slots."""
    import jax

    from slot_jax.training.step import apply_gradients_if_finite
    rng = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(unet_loss)(state.params, x0, slots, rng, model=model, schedule=schedule)
    return apply_gradients_if_finite(state, loss, grads, optimizer)


def _timed_steps(step, state, args, *inputs):
    import jax
    times, first = [], None
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = step(state, *inputs)
        jax.block_until_ready(metrics["loss"])
        seconds = time.perf_counter() - start
        if i == 0:
            first = seconds
        if i >= args.warmup:
            times.append(seconds)
    return {"times": times, "first_step_s": first, "loss": float(metrics["loss"])}


def jax_train_step(unet: str, batch: int, conv_impl: str = "auto") -> tuple:
    """The UNet's jitted train step (state donated), its initial state and (x0, slots) of `batch`."""
    import jax
    import jax.numpy as jnp

    from slot_jax.models.diffusion import make_schedule
    from slot_jax.training.state import state_from_params

    config = diffusion_config(unet, conv_impl)
    d = config.diffusion
    model, optimizer = build_config_unet(config, conv_impl), _optimizer(config)
    schedule = make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)
    x0, slots = map(jnp.asarray, _random_inputs(config, batch))

    params = host_params(model, x0[:1], jnp.zeros((1,), jnp.int32), slots[:1])
    state = state_from_params(params, optimizer, jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(unet_train_step, model=model, schedule=schedule, optimizer=optimizer),
                   donate_argnums=0)
    return step, state, (x0, slots)


def jax_train_worker(args) -> dict:
    step, state, inputs = jax_train_step(args.unet, args.batch, args.jax_variant)
    return _timed_steps(step, state, args, *inputs)


def jax_full_step_worker(args) -> dict:
    """The whole slot-diffusion train step (training.diffusion_step) with a random frozen VAE."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from slot_jax.models.diffusion import make_schedule
    from slot_jax.models.slot_diffusion import build_slot_diffusion
    from slot_jax.models.vae import build_vae
    from slot_jax.training.diffusion_step import diffusion_train_step
    from slot_jax.training.state import state_from_params

    config = diffusion_config(args.unet, args.jax_variant)
    d = config.diffusion
    model, vae, optimizer = build_slot_diffusion(config.model), build_vae(config.vae.model), _optimizer(config)
    schedule = make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)
    size = image_size(config)

    def init(rng):
        init_rng, slots_rng, vae_rng, train_rng = jax.random.split(rng, 4)
        params = model.init({"params": init_rng, "slots": slots_rng}, jnp.zeros((1, *size, 3)),
                            jnp.zeros((1, *latent_shape(config))), jnp.zeros((1,), jnp.int32))["params"]
        vae_params = vae.init({"params": vae_rng, "latent": vae_rng}, jnp.zeros((1, *size, 3)))["params"]
        return state_from_params(params, optimizer, train_rng), {"vae": vae_params, "latent_scale": jnp.float32(1.0)}

    with jax.threefry_partitionable(False):  # compiles several times faster on XLA:CPU
        state, frozen = jax.jit(init)(jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(diffusion_train_step, model=model, vae=vae, schedule=schedule,
                                     prediction=d.prediction, optimizer=optimizer), donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (args.batch, *size, 3), dtype=np.uint8))}
    return _timed_steps(lambda s, b: step(s, b, frozen), state, args, batch)


def torch_train_worker(args) -> dict:
    import torch
    from torch_unet_twin import alphas_cumprod, from_config

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    device = torch_device(args)
    config = diffusion_config(args.unet)
    d, m = config.diffusion, config.model
    x0, slots = (torch.from_numpy(a).to(device) for a in _random_inputs(config, args.batch))
    x0 = x0.permute(0, 3, 1, 2).contiguous()  # NCHW
    model = from_config(m.unet, x0.shape[1], m.slot_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    alpha_bar = alphas_cumprod(d.schedule, d.num_train_steps, d.beta_start, d.beta_end).to(device)
    times, first = [], None
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        t = torch.randint(0, d.num_train_steps, (args.batch,), device=device)
        noise = torch.randn_like(x0)
        a = alpha_bar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # torch/bf16: the twin under CPU autocast (convolutions and matmuls in bfloat16).
        with torch.autocast(device.type, torch.bfloat16, enabled=args.torch_bf16):
            prediction = model(x_t, t, slots)
        loss = torch.mean((prediction.float() - noise) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if i == 0:
            first = seconds
        if i >= args.warmup:
            times.append(seconds)
    return {"times": times, "first_step_s": first, "loss": loss.item()}


def sample_worker(args) -> dict:
    import jax
    import jax.numpy as jnp

    from slot_jax.models import diffusion

    config = diffusion_config(args.unet, args.jax_variant)
    d = config.diffusion
    model = build_config_unet(config, args.jax_variant)
    schedule = diffusion.make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)
    shape = (args.batch, *latent_shape(config))
    _, slots = _random_inputs(config, args.batch)
    slots = jnp.asarray(slots)
    params = host_params(model, jnp.zeros((1, *shape[1:])), jnp.zeros((1,), jnp.int32), slots[:1])

    def run(params, slots, key):  # params and slots are arguments, so nothing is constant-folded
        denoise = lambda x_t, t: model.apply({"params": params}, x_t, t, slots)
        return diffusion.sample(denoise, schedule, shape, key, sampler=args.sampler, num_steps=args.sample_steps,
                                eta=0.0, prediction=d.prediction)

    key = jax.random.PRNGKey(1)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(params, slots, key).compile()
    compile_s = time.perf_counter() - start
    times = []
    while len(times) < args.sample_repeats + 1:
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, slots, key))
        times.append(time.perf_counter() - start)
        # The first call pays one-off costs (~0.1-0.2 s: buffers, threads): a warm-up when that matters.
        if len(times) == 1 and times[0] >= args.sample_warmup_below:
            break
    first, timed = times[0], (times if len(times) == 1 else times[1:])
    return {"times": timed, "first_call_s": first, "warmed_up": len(times) > 1, "compile_s": compile_s}


def worker_main(args) -> None:
    if args.task == "sample":
        result = sample_worker(args)
    elif args.framework == "torch":
        result = torch_train_worker(args)
    elif args.task == "full_step":
        result = jax_full_step_worker(args)
    else:
        result = jax_train_worker(args)
    result["peak_rss_mb"] = peak_memory_mb(args.framework)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver

def worker(*extra, variant: str = "") -> dict:
    return run_worker(*extra, "--device", driver_device(), script=__file__, env=worker_env(variant))


def run_train(args, peaks: dict) -> list:
    has_torch = importlib.util.find_spec("torch") is not None
    if not has_torch:
        print("torch is not installed: the train part times JAX only")
    skip_reason = torch_bf16_skip_reason(driver_device()) if args.torch_bf16 else None
    if skip_reason:
        print(skip_reason)
    torch_bf16 = args.torch_bf16 and not skip_reason
    torch_entries = [("torch", "torch", "train")] + ([("torch/bf16", "torch", "train")] if torch_bf16 else [])
    entries = (torch_entries if has_torch else []) + [
        (f"jax/{v}", v, "train") for v in args.jax_variants.split(",")]
    if args.full_step:
        entries.append(("jax-full/auto", "auto", "full_step"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffusion_speed_xla_cache_") as cache:
        if args.compile_cache:  # later rounds' JAX workers load the executables round 1 compiled
            os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        try:
            for unet in args.unets.split(","):
                rows += _train_rows(args, peaks, entries, unet)
        finally:
            for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
                os.environ.pop(name, None)
    return rows


def _train_rows(args, peaks, entries, unet) -> list:
    """Rows of one UNet, every batch size: implementations alternate over the rounds."""
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    flops = 3 * unet_forward_flops(unet)  # forward + backward ~ 3x forward
    rows = []
    for batch in map(int, args.batches.split(",")):
        times = {}
        for round_index in range(args.rounds):
            for label, variant, task in (entries if round_index % 2 == 0 else entries[::-1]):
                framework = "torch" if label.startswith("torch") else "jax"
                print(f"  train {unet} batch {batch} {label} (round {round_index + 1})", flush=True)
                result = worker("--task", task, "--framework", framework, "--unet", unet, "--batch", str(batch),
                                "--jax_variant", variant, *common, *(["--torch_bf16"] * (label == "torch/bf16")),
                                variant=variant)
                slot = times.setdefault(label, {"times": [], "peak_rss_mb": 0.0,
                                                "first_step_s": result["first_step_s"]})
                slot["times"] += result["times"]
                slot["peak_rss_mb"] = max(slot["peak_rss_mb"], result["peak_rss_mb"])
        torch_s = statistics.median(times["torch"]["times"]) if "torch" in times else None
        for label, slot in times.items():
            seconds = statistics.median(slot["times"])
            full = label.startswith("jax-full")
            gflops = None if full else flops * batch / seconds / 1e9
            peak = peaks.get("torch" if label.startswith("torch") else "jax")
            rows.append({
                "part": "train", "unet": unet, "batch": batch, "impl": label, "s_per_step": seconds,
                "images_per_s": batch / seconds,
                "jax_over_torch": None if (full or torch_s is None) else torch_s / seconds,
                "gflops": gflops, "pct_matmul_peak": None if gflops is None or not peak else 100 * gflops / peak,
                "peak_rss_mb": slot["peak_rss_mb"],
                "first_step_s": slot["first_step_s"],  # round 1's, with the compile for JAX
                "step_gflop": None if full else flops * batch / 1e9, "steps_timed": len(slot["times"])})
    return rows


def run_sampling(args, peaks: dict) -> list:
    rows, flops = [], {}
    for spec in args.sample_runs.split(","):
        unet, sampler, steps = spec.rsplit(":", 2)
        if unet not in flops:
            flops[unet] = unet_forward_flops(unet)
        print(f"  sample {unet} {sampler} {steps} steps batch {args.sample_batch}", flush=True)
        result = worker("--task", "sample", "--unet", unet, "--sampler", sampler, "--sample_steps", steps,
                        "--batch", str(args.sample_batch), "--jax_variant", args.sample_variant,
                        "--sample_repeats", str(args.sample_repeats),
                        "--sample_warmup_below", str(args.sample_warmup_below), variant=args.sample_variant)
        seconds, steps = statistics.median(result["times"]), int(steps)
        gflops = flops[unet] * steps * args.sample_batch / seconds / 1e9
        rows.append({"part": "sampling", "unet": unet, "batch": args.sample_batch, "sampler": sampler,
                     "steps": steps, "impl": f"jax/{args.sample_variant}", "compile_s": result["compile_s"],
                     "s_per_call": seconds, "images_per_s": args.sample_batch / seconds,
                     "ms_per_unet_eval": 1000 * seconds / steps, "gflops": gflops,
                     "pct_matmul_peak": 100 * gflops / peaks["jax"], "peak_rss_mb": result["peak_rss_mb"],
                     "first_call_s": result["first_call_s"], "warmed_up": result["warmed_up"],
                     "calls_timed": len(result["times"])})
    return rows


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def print_tables(rows, peaks) -> None:
    print("\nfloat32 square matmul (2048^3 on the CPU, 8192^3 on a GPU): "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    train = [r for r in rows if r["part"] == "train"]
    if train:
        print("\n### Train step (forward + backward + Adam)\n")
        print("| UNet | batch | impl | s/step | img/s | JAX/torch | GFLOP/s | % matmul peak | peak RSS MB |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in train:
            print(f"| {r['unet']} | {r['batch']} | {r['impl']} | {r['s_per_step']:.3f} | {r['images_per_s']:.1f} | "
                  f"{_fmt(r['jax_over_torch'], '.2f')} | {_fmt(r['gflops'], '.1f')} | "
                  f"{_fmt(r['pct_matmul_peak'], '.1f')} | {r['peak_rss_mb']:.0f} |")
        if any(r["impl"].startswith("jax-full") for r in train):
            print("\njax-full: the whole slot-diffusion step (encoder, Slot Attention, frozen VAE encoder, UNet) "
                  "on the dataset's images; the other rows are the UNet alone on latents.")
    sampling = [r for r in rows if r["part"] == "sampling"]
    if sampling:
        print("\n### Sampling (one jitted `sample` call, JAX)\n")
        print("| UNet | batch | sampler | steps | compile s | s/call | img/s | ms/UNet eval | GFLOP/s | "
              "% matmul peak | peak RSS MB |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sampling:
            print(f"| {r['unet']} | {r['batch']} | {r['sampler']} | {r['steps']} | {r['compile_s']:.1f} | "
                  f"{r['s_per_call']:.2f} | {r['images_per_s']:.2f} | {r['ms_per_unet_eval']:.1f} | "
                  f"{r['gflops']:.1f} | {r['pct_matmul_peak']:.1f} | {r['peak_rss_mb']:.0f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="train", choices=("train", "full_step", "sample"), help=argparse.SUPPRESS)
    parser.add_argument("--framework", default="jax", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--unet", default="quick", choices=UNETS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--jax_variant", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--sampler", default="ddim", help=argparse.SUPPRESS)
    parser.add_argument("--sample_steps", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help=argparse.SUPPRESS)

    parser.add_argument("--part", default="train,sampling", help="train, sampling or train,sampling")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: " + " ".join(f"--{k} {v}" for k, v in QUICK_DEFAULTS.items())
                             + " (flags given explicitly still win)")
    parser.add_argument("--unets", default="quick,report", help="train part: configs/diffusion.py variants")
    parser.add_argument("--batches", default="8,32", help="train part")
    parser.add_argument("--jax_variants", default="auto+ynn,auto",
                        help="train part: model.unet.conv_impl values to time (auto, native, im2col, output_shift), "
                             "each optionally with +ynn (XLA's YNNPACK convolutions) and/or +bf16 (the "
                             "convolutions and the UNet's dense layers in bfloat16, model.compute_dtype; "
                             "+f32_dense keeps those dense layers float32)")
    parser.add_argument("--rounds", type=int, default=2, help="train part: rounds of alternating implementations")
    parser.add_argument("--steps", type=int, default=4, help="train part: timed steps per worker")
    parser.add_argument("--warmup", type=int, default=2, help="train part: untimed steps per worker (compile)")
    parser.add_argument("--torch_bf16", action="store_true",
                        help="train part: also time the PyTorch twin under bfloat16 autocast (torch/bf16)")
    parser.add_argument("--full_step", action="store_true",
                        help="train part: also time the whole slot-diffusion step (JAX, random frozen VAE)")
    parser.add_argument("--no_compile_cache", dest="compile_cache", action="store_false",
                        help="train part: compile afresh in every round (by default rounds after the first "
                             "load round 1's executables from a temporary XLA cache; the timed steps are "
                             "the same either way)")
    parser.add_argument("--sample_runs", default=SAMPLE_RUNS,
                        help="sampling part: comma-separated UNET:SAMPLER:STEPS, SAMPLER one of ddpm, ddim, "
                             "dpm_solver++")
    parser.add_argument("--sample_batch", type=int, default=8, help="sampling part")
    parser.add_argument("--sample_warmup_below", type=float, default=5.0,
                        help="sampling part: a first call that took less than this many seconds was a warm-up "
                             "(it costs ~0.1-0.2 s more than the next) and --sample_repeats timed calls follow; "
                             "a longer one is the timed call (0: always warm up)")
    parser.add_argument("--sample_repeats", type=int, default=1,
                        help="sampling part: timed calls per run after a warm-up")
    parser.add_argument("--sample_variant", default="auto", help="sampling part: model.unet.conv_impl (+ynn as above)")
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS, help="JSON-lines file to append to")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK_DEFAULTS)
        args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0

    parts = args.part.split(",")
    unknown = set(parts) - {"train", "sampling"}
    if unknown:
        parser.error(f"unknown --part {','.join(sorted(unknown))}: use train, sampling or train,sampling")
    for spec in args.sample_runs.split(",") if "sampling" in parts else ():
        unet, sampler, steps = (spec.rsplit(":", 2) + ["", ""])[:3]
        if unet not in UNETS or sampler not in ("ddpm", "ddim", "dpm_solver++") or not steps.isdigit():
            parser.error(f"--sample_runs entry {spec!r}: expected UNET:SAMPLER:STEPS with UNET one of "
                         f"{', '.join(UNETS)} and SAMPLER one of ddpm, ddim, dpm_solver++")
    device = driver_device()  # before the driver's own JAX work (FLOP counts)
    allocator_note()
    load = os.getloadavg()[0]
    if load > 0.5 and device == "cpu":
        print(f"warning: 1-minute load average {load:.1f} before the start; other work on the CPU slows both "
              f"frameworks, and multi-threaded torch eager (OpenMP) dramatically so")
    started = time.perf_counter()
    frameworks = ["jax"] + (["torch"] if "train" in parts and importlib.util.find_spec("torch") else [])
    peaks = {fw: run_worker("--matmul", "--framework", fw, "--device", device, env=worker_env(""))["gflops"]
             for fw in frameworks}
    rows = []
    if "train" in parts:
        rows += run_train(args, peaks)
    if "sampling" in parts:
        rows += run_sampling(args, peaks)
    print_tables(rows, peaks)
    wall = time.perf_counter() - started
    print(f"\n{wall:.0f} s in all")
    info = machine()
    info["platform"] = platform.platform()
    info["load_average_at_start"] = load
    options = {k: v for k, v in vars(args).items() if k not in (
        "worker", "task", "framework", "unet", "batch", "jax_variant", "sampler", "sample_steps", "device", "results")}
    append_result(args.results, machine=info, matmul_gflops=peaks, options=options, wall_s=wall, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
