"""Command line: `python -m slot_jax.main --config=configs/X.py[:variant] --workdir=DIR [--mode=...]`.

Config values are overridden with `--config.a.b=value`. Bad input ends with a one-line error
and exit status 2.
"""
import argparse
import os
import sys

from slot_jax.errors import UserError

MODES = ("train", "eval")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m slot_jax.main", description="Train or evaluate a slot_jax model.",
        epilog="Override any config value with --config.KEY=VALUE, e.g. --config.train.num_steps=2000.")
    parser.add_argument("--config", required=True, help="configs/NAME.py[:variant]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics, figures and results go here")
    parser.add_argument("--mode", default="train", choices=MODES,
                        help="train (resumes, then evaluates) or eval (scores the latest checkpoint)")
    group = parser.add_argument_group(
        "several processes (hosts)", "Start the same command once per process. On a Cloud TPU VM slice, "
        "under SLURM or Open MPI, SLOT_JAX_DISTRIBUTED=1 finds these by itself; elsewhere give all three.")
    group.add_argument("--coordinator_address", metavar="HOST:PORT",
                       help="address of process 0, which every process can reach")
    group.add_argument("--num_processes", type=int, metavar="N", help="how many processes take part")
    group.add_argument("--process_id", type=int, metavar="I", help="this process's index, 0 to N-1")
    known, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg.partition("=")
        if not key.startswith("--config.") or not sep:
            parser.error(f"unrecognised argument {arg!r}: config overrides look like --config.train.num_steps=100")
        overrides[key[len("--config."):]] = value
    _check_processes(parser, known)
    return known, overrides


PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")


def _check_processes(parser, args) -> None:
    given = [name for name in PROCESS_FLAGS if getattr(args, name) is not None]
    if given and len(given) < len(PROCESS_FLAGS):
        missing = [name for name in PROCESS_FLAGS if name not in given]
        parser.error(f"--{given[0]} needs --{' and --'.join(missing)} too (or none of them, "
                     "with SLOT_JAX_DISTRIBUTED=1 on a TPU slice, SLURM or Open MPI)")
    if given and args.num_processes < 1:
        parser.error(f"--num_processes must be at least 1, got {args.num_processes}")
    if given and not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process_id must be in 0..{args.num_processes - 1}, got {args.process_id}")


def start_distributed(args) -> bool:
    """Joins the other processes of a multi-process run before anything touches a device;
    whether this is one."""
    if args.num_processes is not None:
        from slot_jax import distributed
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        return True
    if os.environ.get("SLOT_JAX_DISTRIBUTED") == "1":  # TPU VM slice, SLURM, Open MPI
        import jax
        jax.distributed.initialize()
        return True
    return False


def run(argv) -> int:
    args, overrides = parse_args(argv)
    several_processes = start_distributed(args)
    from slot_jax.config_loader import config_from_args  # after argparse, so --help is instant
    config = config_from_args(args.config, overrides)
    if several_processes:
        from slot_jax import distributed
        distributed.check_shared_workdir(args.workdir, create=args.mode == "train")
    if config.get("kind") == "slot_diffusion":  # the whole report: autoencoder, VAE, diffusion
        from slot_jax.pipeline import run_pipeline
        run_pipeline(config, args.workdir, args.mode)
    elif args.mode == "train":
        from slot_jax.training.loop import train
        train(config, args.workdir)
    else:
        from slot_jax.training.loop import evaluate_latest
        evaluate_latest(config, args.workdir)
    return 0


def main(argv=None) -> int:
    from slot_jax.training.stopping import Stopped
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(stop, file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print("interrupted: the latest completed checkpoint is kept; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    from slot_jax.errors import run_cli
    from slot_jax.host_memory import rerun_with_host_allocator
    # jemalloc or huge pages: fewer page faults on the CPU (slot_jax/host_memory.py); it returns
    # only where it changes nothing, and an unknown SLOT_JAX_ALLOCATOR exits 2 with one line.
    sys.exit(run_cli(rerun_with_host_allocator) or main())
