"""The Frechet distance of FID: slot_jax's trace from symmetric eigenvalues against clean-fid's
scipy `sqrtm` of the covariance product (the baseline, computed here as clean-fid does, and by
clean-fid itself when it is installed), on Inception-sized statistics.

    python benchmarks/frechet_speed.py [--features 2048] [--images 16,1000,10000] [--repeats 2]

Features are post-ReLU-like (non-negative, correlated) random draws; each row's two sets have the
given number of images (fewer than the features: singular covariances, as in a small evaluation).
Prints seconds per distance (best of --repeats), the speed-up and the relative difference, and
appends them with the machine to benchmarks/results/frechet_speed.jsonl.
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

RESULTS = HERE / "results" / "frechet_speed.jsonl"


def sqrtm_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's frechet_distance without its retry: trace of scipy's sqrtm(s1 s2), real part."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2)).real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def statistics(num_images: int, num_features: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    mixing = np.eye(num_features) * 0.5 + rng.normal(size=(num_features, num_features)) * 0.3 / np.sqrt(num_features)
    features = np.maximum(rng.normal(size=(num_images, num_features)) @ mixing + shift, 0)
    return fid.feature_statistics(features)


def best_time(fn, repeats: int):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--images", default="16,1000,10000")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        from cleanfid.fid import frechet_distance as cleanfid_distance
    except ImportError as error:
        print(f"clean-fid not importable ({error}): its own column is left out")
        cleanfid_distance = None

    rows = []
    print("| images per set | features | scipy sqrtm (clean-fid's way) | slot_jax | speed-up | rel. diff. | clean-fid itself |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for num_images in map(int, args.images.split(",")):
        a = statistics(num_images, args.features, 0.0, 1)
        b = statistics(num_images, args.features, 0.05, 2)
        baseline_s, baseline = best_time(lambda: sqrtm_distance(*a, *b), args.repeats)
        ours_s, ours = best_time(lambda: fid.frechet_distance(*a, *b), args.repeats)
        row = dict(images=num_images, features=args.features, sqrtm_s=baseline_s, slot_jax_s=ours_s,
                   speed_up=baseline_s / ours_s, sqrtm_fid=baseline, slot_jax_fid=ours,
                   rel_diff=abs(ours - baseline) / abs(baseline))
        if cleanfid_distance is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its sqrtm(disp=False) is deprecated in SciPy 1.17
                row["cleanfid_fid"] = float(cleanfid_distance(*a, *b))
            row["cleanfid_rel_diff"] = abs(ours - row["cleanfid_fid"]) / abs(row["cleanfid_fid"])
        rows.append(row)
        cleanfid_cell = f"{row['cleanfid_rel_diff']:.1e} rel. diff." if "cleanfid_fid" in row else "-"
        print(f"| {num_images} | {args.features} | {baseline_s:.2f} s | {ours_s:.2f} s | {row['speed_up']:.1f}x | "
              f"{row['rel_diff']:.1e} | {cleanfid_cell} |")
    append_result(RESULTS, machine=machine(), args=vars(args), rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
