"""The kernel gradient of the transposed convolutions by phases (slot_jax/models/upsample.py,
`WEIGHT_GRADIENT_BY_PHASES`) against XLA's weight gradient of the strided convolution that is
their input gradient: the Slot Attention, UNet and VAE train steps compiled both ways in one
process and timed in alternating steps, so both see the same noise.

  strided  XLA's weight gradient of the stride-2 convolution of the output gradient (the default before)
  phases   per output phase, the weight gradient of that phase's stride-1 convolution

    python benchmarks/phase_weight_gradient.py [--models small64,report128] [--unets quick,report]
                                               [--vaes report] [--batches 32,8] [--rounds 8]

Prints the median and minimum step time of each and appends them to
benchmarks/results/phase_weight_gradient.jsonl. Only transposed convolutions computed by phases
change (the Slot Attention decoder's, and the UNet's and VAE's upsampling layers on oneDNN).
"""
import functools
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import flag_variants, run_variants  # noqa: E402

RESULTS = HERE / "results" / "phase_weight_gradient.jsonl"
compiled_variants = functools.partial(flag_variants, module="slot_jax.models.upsample",
                                      attribute="WEIGHT_GRADIENT_BY_PHASES",
                                      variants={"strided": False, "phases": True})


def main(argv=None) -> int:
    return run_variants(argv, __doc__, compiled_variants, "weight_gradient", "strided", RESULTS)


if __name__ == "__main__":
    sys.exit(main())
