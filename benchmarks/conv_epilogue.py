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
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from batch_chunks import compile_sa_step, compile_vae_step, run_variants  # noqa: E402
from unet_attention import compile_step, step_inputs  # noqa: E402

RESULTS = HERE / "results" / "conv_epilogue.jsonl"
VARIANTS = {"separate": False, "fused": True}  # onednn.EPILOGUE while tracing


def compiled_variants(kind: str, name: str, batch: int) -> tuple:
    """{variant: (compiled step, state)} and the step's inputs."""
    from slot_jax import onednn

    default, steps = onednn.EPILOGUE, {}
    if kind == "unet":
        config, schedule, inputs = step_inputs(name, batch)
    try:
        for variant, fused in VARIANTS.items():
            onednn.EPILOGUE = fused
            if kind == "unet":
                steps[variant] = compile_step(config, schedule, inputs)
            else:
                step, state, inputs = (compile_sa_step if kind == "autoencoder" else compile_vae_step)(name, batch)
                steps[variant] = (step, state)
    finally:
        onednn.EPILOGUE = default
    return steps, inputs


def main(argv=None) -> int:
    return run_variants(argv, __doc__, compiled_variants, "epilogue", "separate", RESULTS)


if __name__ == "__main__":
    sys.exit(main())
