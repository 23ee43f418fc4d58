"""FID Inception pool3 throughput: slot_jax's Flax network against pytorch-fid's PyTorch network
(random weights, the same layout), same batch of 299x299 images, same machine.

    python benchmarks/inception_throughput.py [--batch 32] [--rounds 2] [--repeats 3]

Also times the clean-fid "clean" resize (PIL, per channel) that precedes the network. Prints a
table and appends one JSON line with the machine to benchmarks/results/inception_throughput.jsonl.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from slot_jax.evaluation import fid as fid_lib  # noqa: E402
from slot_jax.evaluation.inception import FIDInceptionV3, fid_inception_features  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "inception_throughput.jsonl"


def torch_network():
    """pytorch-fid's FID Inception (torchvision Inception-v3 with the FIDInception* blocks),
    random weights, eval mode: the network pytorch-fid runs, without its download."""
    import torch
    import torchvision
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (pf.FIDInceptionA(192, 32), pf.FIDInceptionA(256, 64),
                                                pf.FIDInceptionA(288, 64))
    net.Mixed_6b, net.Mixed_6c = pf.FIDInceptionC(768, 128), pf.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = pf.FIDInceptionC(768, 160), pf.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    net.fc = torch.nn.Identity()  # pool3 output
    net.dropout = torch.nn.Identity()
    return net.eval()


def worker(framework: str, batch: int, repeats: int) -> list:
    """Seconds per batch, after a warm-up, in this process only (torch's OpenMP threads keep
    spinning after a call and would slow XLA's in a shared process)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, 299, 299, 3)).astype(np.float32)
    if framework == "jax":
        variables = jax.jit(FIDInceptionV3().init)(jax.random.PRNGKey(0), images[:1])
        run = lambda: jax.block_until_ready(fid_inception_features(variables, images))
    else:
        import torch
        torch.set_num_threads(os.cpu_count())
        net = torch_network()
        nchw = torch.from_numpy((images / 127.5 - 1).transpose(0, 3, 1, 2).copy())

        def run():
            with torch.inference_mode():
                net(nchw)
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.batch, args.repeats)))
        return
    import subprocess
    import torch

    names = {"jax": "slot_jax (Flax, jit)", "torch": "pytorch-fid (torch eager)"}
    times = {name: [] for name in names.values()}
    for round_index in range(args.rounds):  # alternate, so drifts in machine load hit both
        order = ("jax", "torch") if round_index % 2 == 0 else ("torch", "jax")
        for framework in order:
            out = subprocess.run([sys.executable, __file__, "--worker", framework, "--batch", str(args.batch),
                                  "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
            times[names[framework]] += json.loads(line[len("RESULT "):])
    uint8 = np.random.default_rng(0).integers(0, 256, (8, 128, 128, 3), dtype=np.uint8)
    start = time.perf_counter()
    fid_lib.clean_resize(uint8)
    resize_per_image = (time.perf_counter() - start) / len(uint8)

    rows = {name: {"seconds": statistics.median(t), "images_per_s": args.batch / statistics.median(t)}
            for name, t in times.items()}
    torch_rate = rows[names["torch"]]["images_per_s"]
    print(f"FID Inception pool3, batch {args.batch} of 299x299, {os.cpu_count()} CPU cores, "
          f"median of {args.rounds * args.repeats} batches each")
    print(f"{'network':<28}{'s/batch':>9}{'images/s':>10}{'vs torch':>10}")
    for name, row in rows.items():
        row["vs_torch"] = row["images_per_s"] / torch_rate
        print(f"{name:<28}{row['seconds']:>9.3f}{row['images_per_s']:>10.1f}{row['vs_torch']:>9.2f}x")
    print(f"clean resize 128x128 -> 299x299 (PIL, per channel): {1000 * resize_per_image:.1f} ms per image")
    record = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"node": platform.node(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "jax": jax.__version__, "jax_backend": jax.default_backend(), "torch": torch.__version__},
        "args": vars(args), "results": rows, "clean_resize_ms_per_image": 1000 * resize_per_image,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
