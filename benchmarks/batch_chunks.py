"""Batches processed in cache-sized chunks against whole (slot_jax/models/conv.py, `batch_chunk`):
the Slot Attention, UNet and VAE train steps compiled each way in one process and timed in
alternating steps, so all see the same machine noise. Variants:

  whole    every op over the whole batch
  wgrad    the weight gradients of oneDNN layers in chunks
  all      also the autoencoder's decoder, the UNet and the VAE run chunk by chunk (the default now)

    python benchmarks/batch_chunks.py [--models small64,report128] [--unets quick,report]
                                      [--vaes report] [--batches 32,8] [--rounds 8]

Prints the median and minimum step time of each and appends them to
benchmarks/results/batch_chunks.jsonl. Chunks apply on a one-device CPU (weight gradients: where
the step runs oneDNN's convolutions); elsewhere all variants compile the same step.
"""
import argparse
import functools
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from train_throughput import append_result, jax_step, machine  # noqa: E402
from unet_attention import alternate, compile_step, step_inputs  # noqa: E402

RESULTS = HERE / "results" / "batch_chunks.jsonl"


def compile_sa_step(model_name: str, batch: int, jax_variant: str = "auto/auto", dtype: str = "float32") -> tuple:
    """The Slot Attention autoencoder's train step as it is traced now (`jax_variant` and the
    compute `dtype` as in train_throughput.model_config), compiled, its state and batch."""
    import jax

    step, state, images = jax_step(model_name, batch, jax_variant, dtype)
    return jax.jit(step).lower(state, images).compile(), state, (images,)


VAE_IMAGE_SIZES = {"report": 128, "quick": 64}  # the data of configs/vae.py's variants


def compile_vae_step(variant: str, batch: int) -> tuple:
    """The VAE's train step (configs/vae.py:VARIANT) as it is traced now, compiled, its state and batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from slot_jax.config_loader import load_config
    from slot_jax.models.vae import build_vae
    from slot_jax.training.diffusion_step import vae_train_step
    from slot_jax.training.optimizer import build_optimizer
    from slot_jax.training.state import state_from_params

    config = load_config(str(HERE.parent / "configs" / f"vae.py:{variant}"))
    size = VAE_IMAGE_SIZES[variant]
    model, optimizer = build_vae(config.model), build_optimizer(config.train)
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    rngs = {"params": jax.random.PRNGKey(0), "latent": jax.random.PRNGKey(1)}
    params = jax.jit(model.init)(rngs, jnp.zeros((1, size, size, 3)))["params"]
    state = state_from_params(params, optimizer, jax.random.PRNGKey(2))
    inputs = ({"image": jnp.asarray(images)},)
    step = jax.jit(functools.partial(vae_train_step, model=model, optimizer=optimizer,
                                     kl_weight=config.train.kl_weight))
    return step.lower(state, *inputs).compile(), state, inputs


VARIANTS = ("whole", "wgrad", "all")


def compiled_variants(kind: str, name: str, batch: int) -> tuple:
    """{variant: (compiled step, state)} and the step's inputs; chunking is decided while tracing."""
    from slot_jax.models import conv

    defaults, steps = (conv.batch_chunk, conv.chunks_pay), {}
    if kind == "unet":
        config, schedule, inputs = step_inputs(name, batch)
    try:
        for variant in VARIANTS:
            conv.batch_chunk = defaults[0] if variant != "whole" else (lambda batch, image_bytes: batch)
            conv.chunks_pay = defaults[1] if variant == "all" else (lambda: False)
            if kind == "unet":
                steps[variant] = compile_step(config, schedule, inputs)
            else:
                step, state, inputs = (compile_sa_step if kind == "autoencoder" else compile_vae_step)(name, batch)
                steps[variant] = (step, state)
    finally:
        conv.batch_chunk, conv.chunks_pay = defaults
    return steps, inputs


def flag_variants(kind: str, name: str, batch: int, module: str, attribute: str, variants: dict,
                  dtype: str = "float32") -> tuple:
    """{variant: (compiled step, state)} and the step's inputs, with `module.attribute` (a switch
    slot_jax reads while tracing) set to each variant's value in `variants` for its compilation.
    `dtype`: the Slot Attention step's compute dtype (the UNet and VAE steps are float32)."""
    if dtype != "float32" and kind != "autoencoder":
        raise ValueError(f"{kind} steps are timed in float32 only; pass --unets '' --vaes ''")
    import importlib

    owner = importlib.import_module(module)
    default, steps = getattr(owner, attribute), {}
    if kind == "unet":
        config, schedule, inputs = step_inputs(name, batch)
    try:
        for variant, value in variants.items():
            setattr(owner, attribute, value)
            if kind == "unet":
                steps[variant] = compile_step(config, schedule, inputs)
            else:
                compile_ = functools.partial(compile_sa_step, dtype=dtype) if kind == "autoencoder" else compile_vae_step
                step, state, inputs = compile_(name, batch)
                steps[variant] = (step, state)
    finally:
        setattr(owner, attribute, default)
    return steps, inputs


def main(argv=None) -> int:
    return run_variants(argv, __doc__, compiled_variants, "chunks", "whole", RESULTS)


def run_variants(argv, doc: str, compiled_variants, label_key: str, baseline: str, results) -> int:
    """The command line shared by the benchmarks that alternate compiled variants of the train
    steps: parses it, times the variants (`alternated_rows`) and appends the rows to `results`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default="small64,report128", help="Slot Attention models ('' for none)")
    parser.add_argument("--unets", default="quick,report", help="UNets ('' for none)")
    parser.add_argument("--vaes", default="report", help="VAEs, configs/vae.py's variants ('' for none)")
    parser.add_argument("--batches", default="32,8")
    parser.add_argument("--rounds", type=int, default=8, help="alternating steps of each; the first is a warm-up")
    args = parser.parse_args(argv)
    rows = alternated_rows(args, compiled_variants, label_key, baseline)
    append_result(results, machine=machine(), rounds=args.rounds, rows=rows)
    return 0


def alternated_rows(args, compiled_variants, label_key: str, baseline: str) -> list:
    """For each Slot Attention model, UNet and VAE named in `args` and each batch: the variants of
    `compiled_variants(kind, name, batch)` timed in alternating steps, one printed row each."""
    jobs = [("autoencoder", m) for m in filter(None, args.models.split(","))]
    jobs += [("unet", u) for u in filter(None, args.unets.split(","))]
    jobs += [("vae", v) for v in filter(None, args.vaes.split(","))]
    rows = []
    for kind, name in jobs:
        for batch in map(int, args.batches.split(",")):
            steps, inputs = compiled_variants(kind, name, batch)
            times = alternate(steps, inputs, args.rounds)
            base = statistics.median(times[baseline])
            for label, seconds in times.items():
                rows.append({"step": kind, "model": name, "batch": batch, label_key: label,
                             "median_s": statistics.median(seconds), "min_s": min(seconds),
                             f"speedup_vs_{baseline}": base / statistics.median(seconds),
                             "steps_timed": len(seconds)})
                r = rows[-1]
                print(f"{kind:11} {name:9} {batch:>5} {label:8} median {r['median_s']:8.3f} s  min {r['min_s']:8.3f} s"
                      f"  {r[f'speedup_vs_{baseline}']:5.2f}x {baseline}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
