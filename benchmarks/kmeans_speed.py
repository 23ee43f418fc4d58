"""k-means speed and agreement: slot_jax's JAX Lloyd against scikit-learn's KMeans(lloyd), both
started from the same k-means++ centres, on slot-like data (default 50,000 x 64, k=32).

    python benchmarks/kmeans_speed.py [--num-points 50000] [--dim 64] [--k 32] [--repeats 3]

Prints a table and appends one JSON line with the machine to benchmarks/results/kmeans_speed.jsonl.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import sklearn
from sklearn.cluster import KMeans

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from metrics_speed import timed  # noqa: E402  (this script's folder is on sys.path)
from slot_jax.evaluation.kmeans import kmeans_plusplus, lloyd  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "kmeans_speed.jsonl"


def slot_like(n, d, k, seed=0):
    """Points around k centres with unequal spreads, like slots of a trained model."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (k, d))
    spread = rng.uniform(0.2, 0.8, k)
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.normal(0, 1, (n, d)) * spread[labels, None]).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-points", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x = slot_like(args.num_points, args.dim, args.k)
    init = np.asarray(kmeans_plusplus(jnp.asarray(x), jax.random.PRNGKey(0), args.k))

    def ours():
        result = lloyd(jnp.asarray(x), jnp.asarray(init), max_iter=args.max_iter)
        jax.block_until_ready(result.inertia)
        return float(result.inertia), int(result.num_iter), np.asarray(result.labels)

    def reference():
        fit = KMeans(args.k, init=init, n_init=1, algorithm="lloyd", max_iter=args.max_iter).fit(x)
        return float(fit.inertia_), int(fit.n_iter_), fit.labels_

    rows = {}
    for name, fn in (("sklearn KMeans(lloyd)", reference), ("slot_jax lloyd (jit)", ours)):
        seconds, (inertia, iterations, labels) = timed(fn, args.repeats)
        rows[name] = {"seconds": seconds, "inertia": inertia, "iterations": iterations, "labels": labels}
    ref, jx = rows["sklearn KMeans(lloyd)"], rows["slot_jax lloyd (jit)"]
    summary = {
        "inertia_rel_diff": abs(jx["inertia"] - ref["inertia"]) / ref["inertia"],
        "label_agreement": float(np.mean(jx["labels"] == ref["labels"])),
        "speed_up": ref["seconds"] / jx["seconds"],
    }
    print(f"k-means on {args.num_points} x {args.dim}, k={args.k}, same k-means++ start, backend {jax.default_backend()}")
    print(f"{'method':<24}{'seconds':>9}{'iters':>7}{'inertia':>14}")
    for name, row in rows.items():
        print(f"{name:<24}{row['seconds']:>9.3f}{row['iterations']:>7}{row['inertia']:>14.2f}")
    print(f"inertia relative difference {summary['inertia_rel_diff']:.2e}, labels equal on "
          f"{100 * summary['label_agreement']:.2f}% of points, JAX speed-up {summary['speed_up']:.2f}x")
    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"node": platform.node(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "jax": jax.__version__, "jax_backend": jax.default_backend(), "sklearn": sklearn.__version__},
        "args": vars(args),
        "results": {name: {k: v for k, v in row.items() if k != "labels"} for name, row in rows.items()},
        **summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
