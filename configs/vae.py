"""KL-regularised VAE that maps images to the latents of the diffusion decoder.

Variants (`--config=configs/vae.py:VARIANT`):
  report  built-in scenes, 128x128x3 -> 32x32x3 latents (the report's VAE shapes)
  quick   built-in Multi-dSprites, 64x64x3 -> 16x16x3, a few minutes on 2 CPU cores
configs/diffusion.py embeds one of these as `config.vae` and trains it first when it is missing.
"""
import ml_collections

VARIANTS = ("report", "quick")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "report"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of vae.py; choose one of {', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.kind = "vae"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.seed = 0
    c.data.global_batch_size = 32

    c.model = ml_collections.ConfigDict()
    c.model.channels = (64, 128, 256)  # one per resolution level: 128 -> 64 -> 32
    c.model.num_res_blocks = 1
    c.model.latent_channels = 3
    c.model.num_groups = 8
    c.model.conv_impl = "auto"

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 20_000
    c.train.learning_rate = 2e-4
    c.train.schedule = "warmup_cosine"
    c.train.warmup_steps = 500
    c.train.min_learning_rate = 1e-6
    c.train.grad_clip_norm = 1.0
    # Weight of the KL term (summed over latent dims) against the per-pixel MSE: small, as in LDM,
    # so the latents keep the detail and the diffusion stage rescales them to unit variance.
    c.train.kl_weight = 1e-6
    c.train.log_every = 50
    c.train.eval_every = 2_000
    c.train.checkpoint_every = 1_000
    c.train.keep_checkpoints = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 256
    c.eval.batch_size = 32
    c.eval.num_figure_rows = 8

    if variant == "quick":
        c.data.name = "multi_dsprites"
        c.data.global_batch_size = 16
        c.model.channels = (16, 32, 64)  # 64 -> 32 -> 16
        c.train.num_steps = 500
        c.train.warmup_steps = 50
        c.train.learning_rate = 1e-3
        c.train.log_every = 25
        c.train.eval_every = 250
        c.train.checkpoint_every = 250
        c.eval.num_examples = 128
    return c
