"""Where the train step's time goes: forward + backward of each part of the autoencoder, jitted
separately, on the benchmark models of train_throughput.py.

    python benchmarks/step_parts.py [--model small64] [--batch 32]
"""
import argparse
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_throughput import image_size, model_config  # noqa: E402

from slot_jax.models.autoencoder import build_autoencoder  # noqa: E402


def timed(f, *args, repeats=3) -> float:
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2)))
    jax.block_until_ready(grad(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        result = grad(*args)
    jax.block_until_ready(result)
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small64")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variant", default="auto/auto", help="UPSAMPLE/CONV_IMPL, as in train_throughput.py")
    args = parser.parse_args(argv)
    config = model_config(args.model, args.variant)
    model = build_autoencoder(config.model)
    m = config.model
    image = jax.random.uniform(jax.random.PRNGKey(0), (args.batch, *image_size(config), 3))
    params = model.init({"params": jax.random.PRNGKey(0), "slots": jax.random.PRNGKey(1)}, image)["params"]
    encoded = model.encoder.apply({"params": params["encoder"]}, image)["features"]
    slots = jax.random.normal(jax.random.PRNGKey(2), (args.batch, m.num_slots, m.slot_size))
    parts = {
        "encoder": timed(lambda p: model.encoder.apply({"params": p}, image)["features"], params["encoder"]),
        "slot attention": timed(lambda p: model.slot_attention.apply({"params": p}, slots, encoded)[0],
                                params["slot_attention"]),
        "decoder": timed(lambda p: model.decoder.apply({"params": p}, slots)["recon"], params["decoder"]),
        "whole model": timed(lambda p: model.apply({"params": p}, image, rngs={"slots": jax.random.PRNGKey(0)})
                             ["recon"], params),
    }
    print(f"{args.model}, batch {args.batch}, forward+backward, {jax.default_backend()}")
    for name, seconds in parts.items():
        print(f"  {name:15s} {seconds:7.3f} s  {100 * seconds / parts['whole model']:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
