"""FID and KID between two image sets, without PyTorch.

    python -m slot_jax.fid A B [--mode clean|legacy_pytorch] [--weights PATH] [--batch_size 50]
        [--save_stats_a FILE] [--save_stats_b FILE] [--out results.json] [--no_kid]

A and B are folders of images, `.npz` files with a uint8 `images` array [N, H, W, 3], or `.npz`
statistics files written by --save_stats_* (reused only for the same mode and image size;
two statistics files need no Inception weights).
The Inception weights come from --weights, $SLOT_JAX_INCEPTION_WEIGHTS or
~/.cache/slot_jax/pt_inception-2015-12-05-6726825d.pth; `--download` fetches them (checksummed).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from slot_jax.errors import UserError, run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slot_jax.fid", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="folder, images .npz or statistics .npz")
    parser.add_argument("b", help="folder, images .npz or statistics .npz")
    parser.add_argument("--mode", default="clean", help="clean (clean-fid) or legacy_pytorch (pytorch-fid)")
    parser.add_argument("--weights", default=None, help="path of pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--download", action="store_true", help="download the weights to the cache first")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--save_stats_a", default=None, help="write A's statistics (with features, for KID)")
    parser.add_argument("--save_stats_b", default=None, help="write B's statistics")
    parser.add_argument("--out", default=None, help="also write the scores as JSON")
    parser.add_argument("--no_kid", action="store_true")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args) -> int:
    from slot_jax.evaluation import fid_score
    from slot_jax.evaluation.inception import download_weights
    from slot_jax.training.experiment import write_atomically

    try:
        if args.download and not args.weights:
            download_weights()
        sources = [(path, fid_score.read_source(path)) for path in (args.a, args.b)]  # bad input fails fast
        for path, source in sources:
            if isinstance(source, fid_score.Statistics) and source.mode != args.mode:
                raise fid_score.FIDInputError(f"{path} holds statistics for mode {source.mode!r}, not "
                                              f"{args.mode!r}: pass --mode={source.mode} or recompute them")
        extractor = None  # two statistics files need no Inception network, nor its weights
        if not all(isinstance(source, fid_score.Statistics) for _, source in sources):
            extractor = fid_score.FeatureExtractor(args.mode, args.weights, args.batch_size)
        stats_a, stats_b = (source if isinstance(source, fid_score.Statistics) else extractor.statistics(source, path)
                            for path, source in sources)
        result = fid_score.scores(stats_a, stats_b, kid=not args.no_kid)
        # Written only once everything is computed: a failing run leaves old files alone.
        for stats, path in ((stats_a, args.save_stats_a), (stats_b, args.save_stats_b)):
            if path:
                stats.save(path)
        if args.out:
            write_atomically(pathlib.Path(args.out), json.dumps(result, indent=2))
    except UserError:  # e.g. missing weights (also an OSError): its message names the fix already
        raise
    except OSError as error:  # e.g. an unwritable --out or --save_stats path
        raise UserError(f"{error}: choose a writable path") from None
    line = f"FID ({result['mode']}): {result['fid']:.4f}"
    if "kid" in result:
        line += f"   KID: {result['kid']:.6f}"
    print(line + f"   images: {result['num_images'][0]} vs {result['num_images'][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
