"""bfloat16 weight gradients on oneDNN (slot_jax/models/conv.py, `ONEDNN_WEIGHT_GRADIENT`) against
XLA's: the Slot Attention train steps with model.compute_dtype=bfloat16 compiled both ways in one
process and timed in alternating steps, so both see the same noise.

  xla     XLA's bfloat16 weight gradients (over batch chunks), as before
  onednn  stride-1 layers' weight gradients on oneDNN's bf16 kernels (strongly narrowing layers
          keep XLA's, see conv.weight_gradient_on_onednn_pays)

    python benchmarks/bf16_weight_gradient.py [--models small64,report128] [--batches 32,8] [--rounds 8]

Prints the median and minimum step time of each and appends them to
benchmarks/results/bf16_weight_gradient.jsonl. Slot Attention models only (the UNet and VAE
steps of the shared harness are float32).
"""
import functools
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import flag_variants, run_variants  # noqa: E402

RESULTS = HERE / "results" / "bf16_weight_gradient.jsonl"
compiled_variants = functools.partial(flag_variants, module="slot_jax.models.conv",
                                      attribute="ONEDNN_WEIGHT_GRADIENT",
                                      variants={"xla": False, "onednn": True}, dtype="bfloat16")


def main(argv=None) -> int:
    argv = ["--unets", "", "--vaes", "", *(sys.argv[1:] if argv is None else argv)]  # given flags win
    return run_variants(argv, __doc__, compiled_variants, "weight_gradient", "xla", RESULTS)


if __name__ == "__main__":
    sys.exit(main())
