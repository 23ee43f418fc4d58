"""How the memory allocator changes slot_jax's train steps on the CPU: page faults, system time,
step time and peak RSS under each allocator setting, in fresh processes, alternating.

    python benchmarks/host_memory.py [--steps sa:small64:32,unet:quick:8] [--settings default,hugetlb,jemalloc]
        [--rounds 3] [--timed 12] [--dispatch sync|async]

XLA:CPU allocates every step's temporaries and outputs afresh. glibc serves blocks above its mmap
threshold (at most 32 MB) with new mappings, which the kernel must fault in and zero on every step;
the settings compared:
- default: glibc's malloc as it starts (GLIBC_TUNABLES and LD_PRELOAD unset);
- hugetlb: glibc.malloc.hugetlb=1 (2 MiB pages for those mappings; slot_jax's default without jemalloc);
- reuse: hugetlb plus no mmap and no trimming, so glibc keeps freed blocks on its heap;
- heap: the same without huge pages;
- tcmalloc: gperftools' tcmalloc preloaded, as with SLOT_JAX_ALLOCATOR=tcmalloc;
- jemalloc: jemalloc preloaded as slot_jax's default does where it is installed: huge pages, and
  freed blocks above 256 MB handed back at once (Debian: libjemalloc2);
- jemalloc_thp: the same with jemalloc's 8 MB oversize threshold;
- jemalloc_plain: jemalloc preloaded with its own defaults (no MALLOC_CONF), as a user who preloads
  it by hand gets unless slot_jax adds its settings;
- jemalloc_keep: jemalloc with huge pages and no decay, so it keeps every freed block (the rows
  of results/host_memory.jsonl from before 2026-11-29 22:00 UTC call it "jemalloc"; every row
  records its environment).
A step is "sa:MODEL:BATCH" (train_throughput.py's models) or "unet:UNET:BATCH" (diffusion_speed.py's).
With --dispatch async the steps are dispatched as the training loop does, without waiting for each:
XLA then allocates a step's temporaries before the previous step frees its own, which is when an
allocator that keeps freed blocks holds the largest twice.
Prints a table and appends one JSON line per step and setting to benchmarks/results/host_memory.jsonl.
"""
import argparse
import json
import pathlib
import resource
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from train_throughput import append_result, machine, peak_rss_mb, run_worker, worker_env  # noqa: E402

RESULTS = HERE / "results" / "host_memory.jsonl"


def settings() -> dict:
    """name -> the environment variables of that setting."""
    from slot_jax import host_memory
    keep = host_memory.TUNABLE + ":glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"
    return {"default": {}, "hugetlb": {"GLIBC_TUNABLES": host_memory.TUNABLE},
            "reuse": {"GLIBC_TUNABLES": keep},
            "heap": {"GLIBC_TUNABLES": keep.replace(host_memory.TUNABLE + ":", "")},
            **{name: preloaded(name) for name in ("tcmalloc", "jemalloc")},
            "jemalloc_plain": {**preloaded("jemalloc"), "MALLOC_CONF": ""},
            "jemalloc_thp": {**preloaded("jemalloc"), "MALLOC_CONF": "thp:always,metadata_thp:auto"},
            "jemalloc_keep": {**preloaded("jemalloc"),
                              "MALLOC_CONF": "thp:always,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"}}


def preloaded(name: str) -> dict:
    """The variables that slot_jax's command line sets for allocator `name`; LD_PRELOAD "" where
    it is not installed."""
    from slot_jax import host_memory
    library = host_memory.find_allocator(name)
    if library is None:
        return {"LD_PRELOAD": ""}
    return host_memory.preload_environment(name, library, {})


def build_step(spec: str):
    """(jitted step with donated state, state, inputs) for "sa:MODEL:BATCH" or "unet:UNET:BATCH"."""
    import jax
    kind, name, batch = spec.split(":")
    if kind == "sa":
        from train_throughput import jax_step
        step, state, images = jax_step(name, int(batch))
        return jax.jit(step, donate_argnums=0), state, (images,)
    from diffusion_speed import jax_train_step
    return jax_train_step(name, int(batch))


def worker(args) -> dict:
    import jax
    step, state, inputs = build_step(args.step)
    for _ in range(args.warmup):
        state, metrics = step(state, *inputs)
        jax.block_until_ready(metrics["loss"])
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    if args.dispatch == "async":  # as the training loop runs: one mean step time per process
        start, losses = time.perf_counter(), []
        for _ in range(args.timed):
            state, metrics = step(state, *inputs)
            losses.append(metrics["loss"])
        jax.block_until_ready(losses)
        times.append((time.perf_counter() - start) / args.timed)
    else:
        for _ in range(args.timed):
            start = time.perf_counter()
            state, metrics = step(state, *inputs)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"times": times, "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.timed,
            "sys_s_per_step": (after.ru_stime - before.ru_stime) / args.timed, "peak_rss_mb": peak_rss_mb()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step", default="unet:quick:8", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="sa:small64:32,sa:small64:8,unet:quick:32,unet:quick:8,unet:report:8")
    parser.add_argument("--settings", default="default,hugetlb,jemalloc")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the order of the settings turns every round")
    parser.add_argument("--timed", type=int, default=12, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per process (compile)")
    parser.add_argument("--dispatch", choices=("sync", "async"), default="sync",
                        help="sync: wait for each step (per-step times); async: dispatch all timed steps, "
                             "then wait, as the training loop does (the peak RSS then shows buffers held "
                             "across steps; one mean time per process)")
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    common = ["--timed", str(args.timed), "--warmup", str(args.warmup), "--dispatch", args.dispatch]
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    from slot_jax import host_memory
    tunables = settings()
    names = args.settings.split(",")
    unknown = set(names) - set(tunables)
    if unknown:
        parser.error(f"unknown --settings {sorted(unknown)}; choose from {sorted(tunables)}")
    missing = [name for name in names if tunables[name].get("LD_PRELOAD") == ""]
    if missing:
        parser.error(f"--settings {missing}: library not installed (Debian: libtcmalloc-minimal4, libjemalloc2)")
    base_env = {k: v for k, v in worker_env("auto").items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF", host_memory.ALLOCATOR, *host_memory.TCMALLOC_SETTINGS)}
    results = {}
    for round_index in range(args.rounds):
        for spec in args.steps.split(","):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                env = {**base_env, **tunables[name]}
                out = run_worker("--step", spec, *common, script=__file__, env=env)
                entry = results.setdefault((spec, name), {"times": [], "faults": [], "sys": [], "rss": []})
                entry["times"] += out["times"]
                entry["faults"].append(out["faults_per_step"])
                entry["sys"].append(out["sys_s_per_step"])
                entry["rss"].append(out["peak_rss_mb"])
                print(f"round {round_index + 1}/{args.rounds} {spec:16s} {name:8s} "
                      f"{statistics.median(out['times']):.4f} s/step", flush=True)
    info = machine()
    print(f"\n{info['cpu']}, {args.rounds} rounds x {args.timed} steps; x: '{names[0]}' time / this time")
    print(f"{'step':16s} {'setting':8s} {'median s':>9s} {'min s':>7s} {'faults/step':>11s} {'sys s/step':>10s} "
          f"{'peak RSS MB':>11s} {'x':>6s}")
    for spec in args.steps.split(","):
        reference = statistics.median(results[spec, names[0]]["times"])
        for name in names:
            e = results[spec, name]
            median = statistics.median(e["times"])
            row = {"step": spec, "setting": name, "environment": tunables[name], "dispatch": args.dispatch,
                   "median_s": median,
                   "min_s": min(e["times"]), "faults_per_step": statistics.median(e["faults"]),
                   "sys_s_per_step": statistics.median(e["sys"]), "peak_rss_mb": max(e["rss"]),
                   "samples": len(e["times"])}
            print(f"{spec:16s} {name:8s} {median:9.4f} {row['min_s']:7.4f} {row['faults_per_step']:11.0f} "
                  f"{row['sys_s_per_step']:10.4f} {row['peak_rss_mb']:11.0f} {reference / median:6.2f}")
            append_result(args.results, machine=info, **row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
