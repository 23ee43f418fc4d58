"""Speed of ARI: sklearn's adjusted_rand_score loop vs ari_numpy (numba kernel and bincount) vs jitted ari.

    python benchmarks/metrics_speed.py [--num-images 1000] [--size 128] [--chunk 100]

Prints a table and appends one JSON line (with the machine) to
benchmarks/results/metrics_speed.jsonl.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from slot_jax.evaluation import pixel_counts  # noqa: E402
from slot_jax.evaluation.segmentation import ari, ari_numpy  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "metrics_speed.jsonl"


def make_segmentations(num_images, size, num_pred, num_true, seed=0):
    """Predictions that agree with the truth on ~80% of pixels, like a trained model."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, num_true, (num_images, size, size), dtype=np.int32)
    noise = rng.integers(0, num_pred, true.shape, dtype=np.int32)
    pred = np.where(rng.random(true.shape) < 0.8, true % num_pred, noise).astype(np.int32)
    return pred, true


def sklearn_loop(pred, true):
    return np.array([adjusted_rand_score(t.ravel(), p.ravel()) for p, t in zip(pred, true)])


def jitted_in_chunks(pred, true, num_pred, num_true, chunk):
    """Host arrays in, host scores out: the cost an evaluator on host data would pay."""
    score = jax.jit(functools.partial(ari, num_pred=num_pred, num_true=num_true))
    parts = [score(pred[i:i + chunk], true[i:i + chunk]) for i in range(0, len(pred), chunk)]
    return np.concatenate([np.asarray(part) for part in parts])


def timed(fn, repeats):
    fn()  # warm-up: compilation, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num-pred", type=int, default=11)
    parser.add_argument("--num-true", type=int, default=11)
    parser.add_argument("--chunk", type=int, default=100, help="images per jitted call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pred, true = make_segmentations(args.num_images, args.size, args.num_pred, args.num_true)
    sizes = dict(num_pred=args.num_pred, num_true=args.num_true)
    methods = {
        "sklearn loop": lambda: sklearn_loop(pred, true),
        "ari_numpy (bincount)": lambda: ari_numpy(pred, true, kernel="bincount", **sizes),
    }
    if pixel_counts.available():
        # Masks stored as uint8 (as in the TFDS datasets) need a quarter of the memory traffic.
        pred8, true8 = pred.astype(np.uint8), true.astype(np.uint8)
        methods["ari_numpy (numba)"] = lambda: ari_numpy(pred, true, kernel="numba", **sizes)
        methods["ari_numpy (numba, uint8 ids)"] = lambda: ari_numpy(pred8, true8, kernel="numba", **sizes)
    else:
        print("numba not installed: no compiled-kernel rows (pip install -e '.[fast]')")
    methods |= {
        f"jit ari (chunks of {args.chunk})":
            lambda: jitted_in_chunks(pred, true, args.num_pred, args.num_true, args.chunk),
    }
    timings, reference = {}, None
    for name, fn in methods.items():
        # The sklearn loop is the slow baseline: one timed run after its warm-up.
        seconds, scores = timed(fn, 1 if name == "sklearn loop" else args.repeats)
        reference = scores if reference is None else reference
        timings[name] = dict(seconds=seconds, images_per_s=args.num_images / seconds,
                             max_abs_diff=float(np.abs(scores - reference).max()))

    baseline = timings["sklearn loop"]["seconds"]
    print(f"ARI on {args.num_images} images of {args.size}x{args.size}, "
          f"{args.num_pred} pred / {args.num_true} true ids, jax backend "
          f"{jax.default_backend()}")
    print(f"{'method':<30}{'seconds':>10}{'images/s':>12}{'speed-up':>10}{'max |diff|':>12}")
    for name, row in timings.items():
        row["speed_up"] = baseline / row["seconds"]
        print(f"{name:<30}{row['seconds']:>10.3f}{row['images_per_s']:>12.0f}"
              f"{row['speed_up']:>9.1f}x{row['max_abs_diff']:>12.1e}")

    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor(), "node": platform.node(),
                    "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
                    "jax_devices": [str(d) for d in jax.devices()],
                    "python": platform.python_version(), "jax": jax.__version__},
        "args": vars(args),
        "results": timings,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
