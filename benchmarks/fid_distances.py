"""The two distances of FID evaluation, each against clean-fid's way of computing it, timed in the
same run on Inception-sized features:

- the Frechet distance: slot_jax's trace from one symmetric eigenvalue problem against scipy's
  `sqrtm` of the covariance product (clean-fid's way, computed here; clean-fid's own value is
  compared too when it is installed);
- KID: slot_jax's kernels of all pairs computed once against the kernels of every subset
  computed anew (clean-fid's way: `fid.kernel_inception_distance(..., max_kernel_entries=0)`).

    python benchmarks/fid_distances.py [--features 2048] [--images 16,1000,10000]
        [--kid_images 512,2000] [--repeats 2]

Features are post-ReLU-like (non-negative, correlated) random draws; each row's two sets have the
given number of images (for the Frechet distance, fewer than the features make the covariances
singular, as in a small evaluation). KID uses clean-fid's defaults (100 subsets of up to 1000).
Prints seconds per distance (best of --repeats), the speed-up and the relative difference, and
appends them with the machine to benchmarks/results/fid_distances.jsonl.
"""
import argparse
import pathlib
import sys
import time
import warnings

import numpy as np
from scipy import linalg

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from slot_jax.evaluation import fid  # noqa: E402
from train_throughput import append_result, machine  # noqa: E402

RESULTS = HERE / "results" / "fid_distances.jsonl"


def sqrtm_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's frechet_distance without its retry: trace of scipy's sqrtm(s1 s2), real part."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2)).real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def random_features(num_images: int, num_features: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.eye(num_features) * 0.5 + rng.normal(size=(num_features, num_features)) * 0.3 / np.sqrt(num_features)
    return np.maximum(rng.normal(size=(num_images, num_features)) @ mixing + shift, 0).astype(np.float32)


def best_time(fn, repeats: int):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def compare(kind: str, num_images: int, num_features: int, baseline, ours, repeats: int) -> dict:
    baseline_s, baseline_value = best_time(baseline, repeats)
    ours_s, ours_value = best_time(ours, repeats)
    row = dict(distance=kind, images=num_images, features=num_features, baseline_s=baseline_s,
               slot_jax_s=ours_s, speed_up=baseline_s / ours_s, baseline_value=baseline_value,
               slot_jax_value=ours_value, rel_diff=abs(ours_value - baseline_value) / abs(baseline_value))
    print(f"| {kind} | {num_images} | {baseline_s:.2f} s | {ours_s:.2f} s | {row['speed_up']:.1f}x | "
          f"{row['rel_diff']:.1e} |")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--images", default="16,1000,10000", help="images per set for the Frechet distance")
    parser.add_argument("--kid_images", default="512,2000", help="images per set for KID (empty: none)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        from cleanfid.fid import frechet_distance as cleanfid_distance
    except ImportError as error:
        print(f"clean-fid not importable ({error}): its own Frechet values are left out")
        cleanfid_distance = None

    rows = []
    print("| distance | images per set | clean-fid's way | slot_jax | speed-up | rel. diff. |")
    print("|---|---:|---:|---:|---:|---:|")
    for num_images in map(int, filter(None, args.images.split(","))):
        a = fid.feature_statistics(random_features(num_images, args.features, 0.0, 1))
        b = fid.feature_statistics(random_features(num_images, args.features, 0.05, 2))
        row = compare("Frechet", num_images, args.features, lambda: sqrtm_distance(*a, *b),
                      lambda: fid.frechet_distance(*a, *b), args.repeats)
        if cleanfid_distance is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its sqrtm(disp=False) is deprecated in SciPy 1.17
                row["cleanfid_value"] = float(cleanfid_distance(*a, *b))
            row["cleanfid_rel_diff"] = abs(row["slot_jax_value"] - row["cleanfid_value"]) / abs(row["cleanfid_value"])
        rows.append(row)
    for num_images in map(int, filter(None, args.kid_images.split(","))):
        f1 = random_features(num_images, args.features, 0.0, 3)
        f2 = random_features(num_images, args.features, 0.05, 4)
        rows.append(compare("KID", num_images, args.features,
                            lambda: fid.kernel_inception_distance(f1, f2, max_kernel_entries=0),
                            lambda: fid.kernel_inception_distance(f1, f2), args.repeats))
    if cleanfid_distance is not None:
        worst = max((r["cleanfid_rel_diff"] for r in rows if "cleanfid_rel_diff" in r), default=0.0)
        print(f"clean-fid's own Frechet values: largest relative difference {worst:.1e}")
    append_result(RESULTS, machine=machine(), args=vars(args), rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
