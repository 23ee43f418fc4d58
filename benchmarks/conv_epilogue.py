"""Bias and ReLU inside oneDNN's convolution (post-ops, slot_jax/onednn.py `EPILOGUE`) against
XLA's separate pass over each layer's output: the Slot Attention, UNet and VAE train steps
compiled both ways in one process and timed in alternating steps, so both see the same noise.

  separate  the convolution, then bias + ReLU as XLA's own elementwise fusion (the default before)
  fused     the convolution adds the bias and applies the ReLU to each output tile in registers

    python benchmarks/conv_epilogue.py [--models small64,report128] [--unets quick,report]
                                       [--vaes report] [--batches 32,8] [--rounds 8]

Prints the median and minimum step time of each and appends them to
benchmarks/results/conv_epilogue.jsonl. Only layers that run on oneDNN change; elsewhere both
variants compile the same step.
"""
import functools
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import flag_variants, run_variants  # noqa: E402

RESULTS = HERE / "results" / "conv_epilogue.jsonl"
# {variant: (compiled step, state)} and the step's inputs, with onednn.EPILOGUE set while tracing.
compiled_variants = functools.partial(flag_variants, module="slot_jax.onednn", attribute="EPILOGUE",
                                      variants={"separate": False, "fused": True})


def main(argv=None) -> int:
    return run_variants(argv, __doc__, compiled_variants, "epilogue", "separate", RESULTS)


if __name__ == "__main__":
    sys.exit(main())
