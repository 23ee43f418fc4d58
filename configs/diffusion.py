"""Slot Attention with a slot-conditioned latent diffusion decoder: the whole report in one job.

`python -m slot_jax.main --config=configs/diffusion.py[:VARIANT] --workdir=DIR` trains, resuming
where it stopped: (1) the Slot Attention autoencoder in DIR/autoencoder (`config.autoencoder`,
off with --config.run_autoencoder=false), (2) the VAE in DIR/vae unless `config.vae_workdir` names
a trained one (`config.vae`), (3) the diffusion model in DIR; then it writes DIR/report.md.

Variants:
  report  the report's set-up on built-in scenes (128x128, K=11, D=64, 32x32x3 latents, linear
          betas, epsilon prediction, DDPM ancestral sampling with 1000 steps, Adam 4e-4 with StepLR
          0.95 per epoch, batch 32, 38 epochs)
  lsd     the same data with LSD's diffusion recipe (sqrt-linear betas 0.00085..0.012, warmup +
          cosine with clipping, DPM-Solver++ with 25 steps)
  quick   built-in Multi-dSprites at 64x64, every stage small, v-prediction and DDIM-25: about 15
          minutes on 2 CPU cores
"""
import importlib.util
import pathlib

import ml_collections

VARIANTS = ("report", "lsd", "quick")


def _sibling_config(name: str, variant: str) -> ml_collections.ConfigDict:
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"slot_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "slot_diffusion"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.seed = 0
    c.data.global_batch_size = 32
    c.data.epoch_size = 10_000

    # Slot encoder: the autoencoder's (report Part 1), plus the UNet that decodes the slots.
    c.model = _sibling_config("slot_attention", "report").model
    del c.model["decoder"]
    c.model.unet = ml_collections.ConfigDict()
    c.model.unet.channels = 64
    c.model.unet.channel_mult = (1, 2, 4)  # 32x32, 16x16, 8x8 latents
    c.model.unet.num_res_blocks = 1
    c.model.unet.attention_levels = (1, 2)  # self- and cross-attention at 16x16 and 8x8 (and the middle)
    c.model.unet.num_heads = 4
    c.model.unet.num_groups = 8
    c.model.unet.out_channels = 0  # 0: as many as the latents
    c.model.unet.conv_impl = "auto"

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"  # "linear", "sqrt_linear" or "cosine"
    c.diffusion.num_train_steps = 1000
    c.diffusion.beta_start = 1e-4  # Ho et al. 2020
    c.diffusion.beta_end = 0.02
    c.diffusion.prediction = "epsilon"  # "epsilon", "v" or "sample"

    c.sampler = ml_collections.ConfigDict()
    c.sampler.name = "ddpm"  # "ddpm" (Algorithm 2 of Ho et al.), "ddim" or "dpm_solver++"
    c.sampler.num_steps = 1000
    c.sampler.eta = 1.0  # DDIM only: 0 deterministic, 1 DDPM-like

    c.train = ml_collections.ConfigDict()
    steps_per_epoch = -(-c.data.epoch_size // c.data.global_batch_size)
    c.train.num_steps = 38 * steps_per_epoch
    c.train.learning_rate = 4e-4
    c.train.schedule = "step_decay"  # StepLR: x decay_rate every decay_steps
    c.train.decay_steps = steps_per_epoch
    c.train.decay_rate = 0.95
    c.train.warmup_steps = 0
    c.train.min_learning_rate = 0.0
    c.train.grad_clip_norm = 0.0
    c.train.log_every = 50
    c.train.eval_every = steps_per_epoch
    c.train.checkpoint_every = 1_000
    c.train.keep_checkpoints = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 512
    c.eval.batch_size = 32
    c.eval.num_figure_rows = 8
    c.eval.num_reconstructions = 64  # images re-generated from their own slots by the sampler
    c.eval.num_clusters = 24
    c.eval.kmeans_restarts = 4
    c.eval.composition_mode = "cluster"
    c.eval.num_compositions = 512
    c.eval.seed = 0
    c.eval.fid = True
    c.eval.fid_mode = "clean"
    c.eval.fid_weights = ""
    c.eval.fid_batch_size = 50

    c.latent_scale_examples = 512  # training images whose VAE latents set the 1/std scale
    c.vae_workdir = ""  # empty: DIR/vae, trained there first when it has no checkpoint
    c.vae = _sibling_config("vae", "report")
    c.run_autoencoder = True
    c.autoencoder = _sibling_config("slot_attention", "report")
    return c


def _quick(c):
    c.data.name = "multi_dsprites"
    c.vae = _sibling_config("vae", "quick")
    c.autoencoder = _sibling_config("slot_attention", "multi_dsprites")
    a = c.autoencoder
    a.data.global_batch_size = 16
    a.model.slot_size = 32
    a.model.mlp_hidden = 64
    a.model.encoder.strides = (1, 2, 1, 1)
    a.model.encoder.mlp_features = (32, 32)
    a.model.decoder.broadcast_size = (8, 8)
    a.model.decoder.channels = (32, 32, 32)
    a.model.decoder.kernel_sizes = (3, 3, 3)
    a.model.decoder.strides = (2, 2, 2)
    a.train.warmup_steps = 100
    a.train.decay_steps = 10_000
    a.train.num_steps = 300
    a.train.log_every = 25
    a.train.eval_every = 150
    a.train.checkpoint_every = 150
    a.eval.num_examples = 128
    a.eval.num_compositions = 64

    m = c.model
    m.num_slots, m.slot_size, m.mlp_hidden = 6, 32, 64
    m.encoder.strides = (1, 2, 1, 1)
    m.encoder.mlp_features = (32, 32)
    m.unet.channels = 32
    m.unet.channel_mult = (1, 2)  # 16x16 and 8x8 latents
    m.unet.attention_levels = (1,)
    # v-prediction: with the same 800 steps and seed, images sampled from their own slots had
    # MSE 0.026 against 0.126 with epsilon (whose x0 estimates blow up at large t this early).
    c.diffusion.prediction = "v"
    c.sampler.name = "ddim"
    c.sampler.num_steps = 25
    c.sampler.eta = 0.0
    c.data.global_batch_size = 16
    c.train.num_steps = 800
    c.train.schedule = "warmup_cosine"
    c.train.warmup_steps = 50
    c.train.learning_rate = 4e-4
    c.train.grad_clip_norm = 1.0
    c.train.log_every = 25
    c.train.eval_every = 400
    c.train.checkpoint_every = 400
    c.eval.num_examples = 128
    c.eval.num_reconstructions = 16
    c.eval.num_compositions = 32
    c.latent_scale_examples = 128
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "report"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of diffusion.py; choose one of {', '.join(VARIANTS)}")
    c = _base()
    if variant == "lsd":
        c.diffusion.schedule = "sqrt_linear"
        c.diffusion.beta_start, c.diffusion.beta_end = 0.00085, 0.012
        c.sampler.name, c.sampler.num_steps, c.sampler.eta = "dpm_solver++", 25, 0.0
        c.train.schedule = "warmup_cosine"
        c.train.learning_rate = 1e-4
        c.train.warmup_steps = 2_500
        c.train.min_learning_rate = 1e-6
        c.train.grad_clip_norm = 1.0
    elif variant == "quick":
        _quick(c)
    return c
