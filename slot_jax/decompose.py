"""Command line: decompose image files with a trained run.

    python -m slot_jax.decompose --workdir=runs/quick/autoencoder --out=parts photos/ other.png

writes OUT/decomposition.npz (file names, the resized images, slots, attention, segmentation and,
for the autoencoder, reconstructions, masks and per-slot images) and OUT/decomposition.png (one
row per image). With --sample, a diffusion model also samples each image back from its slots.
"""
import argparse
import pathlib
import sys

import numpy as np

from slot_jax.errors import UserError, run_cli

FIGURE_CELL = 96  # small images are enlarged to at least this many pixels in the figure


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m slot_jax.decompose",
                                     description="Decompose image files into slots with a trained slot_jax run.")
    parser.add_argument("images", nargs="+", help="image files, or directories of them")
    parser.add_argument("--workdir", required=True, help="the --workdir of a trained run")
    parser.add_argument("--out", required=True, help="folder for decomposition.npz and decomposition.png")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--num_slots", type=int, help="slots to use (default: as trained)")
    parser.add_argument("--num_iterations", type=int, help="Slot Attention iterations (default: as trained)")
    parser.add_argument("--seed", type=int, help="key of the initial slots and of sampling (default: the evaluation's)")
    parser.add_argument("--sample", action="store_true",
                        help="diffusion model: also sample every image back from its slots (config.sampler)")
    parser.add_argument("--max_rows", type=int, default=16, help="images shown in decomposition.png")
    return parser.parse_args(argv)


def write_figure(path: pathlib.Path, images, parts: dict, max_rows: int) -> None:
    from slot_jax.evaluation import figures

    if "slot_images" in parts:  # input | reconstruction | segmentation | each slot's image
        figures.save_reconstructions(path, images, parts["recon"], parts["masks"], parts["slot_images"],
                                     max_rows=max_rows, min_cell=FIGURE_CELL)
        return
    # input | [sampled reconstruction |] segmentation | each slot's attention, shown on the image
    rows = min(len(images), max_rows)
    images = images[:rows].astype(np.float32) / 255.0
    attention = parts["attention"][:rows]
    shown = images[:, None] * attention[..., None] + (1.0 - attention[..., None])
    columns = [images[:, None]]
    if "recon" in parts:
        columns.append(parts["recon"][:rows, None])
    columns += [figures.colorize_ids(parts["segmentation"][:rows])[:, None], shown]
    tiles = np.concatenate(columns, axis=1)
    figures.save_image_grid(path, tiles.reshape(-1, *tiles.shape[2:]), ncols=tiles.shape[1], min_cell=FIGURE_CELL)


def run(argv) -> int:
    args = parse_args(argv)
    from slot_jax.data.image_files import image_files, read_images
    from slot_jax.trained import load

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder")
    files = image_files(args.images)  # before the model loads: a typo fails at once
    model = load(args.workdir, step=args.step, num_slots=args.num_slots, num_iterations=args.num_iterations)
    images = read_images(files, model.image_size)
    parts = model.decompose(images, seed=args.seed)
    if args.sample:
        if model.kind != "slot_diffusion":
            raise UserError("--sample is for the diffusion model; the autoencoder reconstructs every image anyway")
        from slot_jax.training.generation import progress_reporter

        parts["recon"] = model.decode(parts["slots"], seed=args.seed or 0, on_batch=progress_reporter(
            len(images), f"sampling ({model.config.sampler.name}, {model.config.sampler.num_steps} steps)"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out} ({error.strerror}): give a writable folder") from None
    tmp = out / "decomposition.tmp.npz"
    np.savez_compressed(tmp, names=np.array([str(f) for f in files]), images=images, step=model.step, **parts)
    tmp.replace(out / "decomposition.npz")
    write_figure(out / "decomposition.png", images, parts, args.max_rows)
    slots = parts["slots"]
    print(f"decomposed {len(images)} images ({model.image_size[0]}x{model.image_size[1]}) into {slots.shape[1]} "
          f"slots of {slots.shape[2]} with step {model.step} of {args.workdir}: {out / 'decomposition.npz'}, "
          f"{out / 'decomposition.png'}", flush=True)
    return 0


def main(argv=None) -> int:
    return run_cli(lambda: run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
