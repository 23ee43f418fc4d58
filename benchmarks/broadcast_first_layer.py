"""The decoder's first layer from the slots' border classes (slot_jax/models/decoder.py,
`FIRST_LAYER_BY_CLASSES`) against the same layer run on every broadcast canvas: the Slot
Attention train steps compiled both ways in one process and timed in alternating steps, so both
see the same noise.

  canvases  broadcast each slot to the grid, add the position embedding, run the layer on each canvas
  classes   the layer on the position embedding once and on slot_size unit images of 2r+1 pixels;
            each slot's first feature map is their sum, one value per border class

    python benchmarks/broadcast_first_layer.py [--models small64,report128] [--batches 32,8] [--rounds 8]

Prints the median and minimum step time of each and appends them to
benchmarks/results/broadcast_first_layer.jsonl.
"""
import functools
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import flag_variants, run_variants  # noqa: E402

RESULTS = HERE / "results" / "broadcast_first_layer.jsonl"
compiled_variants = functools.partial(flag_variants, module="slot_jax.models.decoder",
                                      attribute="FIRST_LAYER_BY_CLASSES", variants={"canvases": False, "classes": True})


def main(argv=None) -> int:
    return run_variants(["--unets", "", "--vaes", "", *(argv or sys.argv[1:])], __doc__, compiled_variants,
                        "first_layer", "canvases", RESULTS)


if __name__ == "__main__":
    sys.exit(main())
