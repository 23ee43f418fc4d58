"""Slot Attention autoencoder (the report's Part 1).

Variants, chosen with `--config=configs/slot_attention.py:VARIANT`:
  report          the report's set-up on built-in `scenes` (128x128, K=11, D=64, Adam 1e-4,
                  batch 32, ReduceLROnPlateau, 45 epochs of 10,000 images)
  scenes          built-in scenes with the Slot Attention paper's recipe (warmup + decay)
  tetrominoes     built-in Tetrominoes (35x35, K=4, full-resolution broadcast decoder)
  multi_dsprites  built-in Multi-dSprites (64x64, K=6)
  quick           Tetrominoes, small enough to learn visibly in ~10 minutes on 2 CPU cores
"""
import ml_collections

VARIANTS = ("report", "scenes", "tetrominoes", "multi_dsprites", "quick")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.seed = 0
    c.data.global_batch_size = 32
    c.data.epoch_size = 10_000  # images per "epoch": the built-in streams are unbounded

    c.model = ml_collections.ConfigDict()
    c.model.num_slots = 11
    c.model.slot_size = 64
    c.model.num_iterations = 3
    c.model.mlp_hidden = 128
    c.model.epsilon = 1e-8
    c.model.slot_init = "gaussian"  # or "learned"
    c.model.implicit_grad = False
    c.model.encoder = ml_collections.ConfigDict()
    c.model.encoder.channels = (32, 32, 32, 32)
    c.model.encoder.kernel_sizes = (5, 5, 5, 5)
    c.model.encoder.strides = (1, 2, 2, 1)
    c.model.encoder.mlp_features = (32, 32)
    c.model.decoder = ml_collections.ConfigDict()
    # 8x8 -> 128x128 by four stride-2 layers. The paper's CLEVR decoder adds a stride-1 5x5 layer at
    # full resolution, which triples the step's cost; the report does not say it had one.
    c.model.decoder.broadcast_size = (8, 8)
    c.model.decoder.channels = (64, 64, 64, 64)
    c.model.decoder.kernel_sizes = (5, 5, 5, 5)
    c.model.decoder.strides = (2, 2, 2, 2)
    c.model.decoder.output_kernel_size = 3
    c.model.decoder.upsample = "auto"  # stride>1 layers: "transpose" (XLA native), "subpixel", "phases", or per backend
    # Convolution lowering: "native" (XLA), "im2col", "output_shift", "phase_grad", "swap_wgrad",
    # "onednn", or "auto" (per backend and layer; slot_jax/models/conv.py).
    c.model.conv_impl = "auto"
    # Compute dtype of the encoder's and decoder's convolutions: "float32" or "bfloat16" (for GPUs
    # and TPUs, and CPUs with AVX512_BF16 via oneDNN: 1.4-2.0x on ours; slower without it). Parameters,
    # Slot Attention, the masks and the loss stay float32.
    c.model.compute_dtype = "float32"

    c.train = ml_collections.ConfigDict()
    steps_per_epoch = -(-c.data.epoch_size // c.data.global_batch_size)  # 313
    c.train.num_steps = 45 * steps_per_epoch
    c.train.learning_rate = 1e-4
    c.train.schedule = "plateau"  # "plateau", "warmup_exp_decay", "warmup_cosine" or "constant"
    c.train.warmup_steps = 10_000
    c.train.decay_steps = 100_000  # warmup_exp_decay: lr * decay_rate ** (step / decay_steps)
    c.train.decay_rate = 0.5
    c.train.plateau_factor = 0.1
    c.train.plateau_patience = 3  # evaluations (epochs) without improvement
    c.train.plateau_threshold = 1e-4  # relative improvement that counts (PyTorch's default)
    c.train.min_learning_rate = 1e-7
    c.train.grad_clip_norm = 0.0  # 0 disables clipping
    c.train.log_every = 50
    c.train.eval_every = steps_per_epoch  # one epoch; drives the plateau schedule
    c.train.checkpoint_every = 1_000
    c.train.keep_checkpoints = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.num_examples = 512
    c.eval.batch_size = 32
    c.eval.num_figure_rows = 8
    # Compositional generation: k-means over the validation slots, new slot sets drawn from it.
    c.eval.num_clusters = 24
    c.eval.kmeans_restarts = 4
    c.eval.composition_mode = "cluster"  # "cluster" (the report's), "centre" or "per_position"
    c.eval.num_compositions = 512
    c.eval.seed = 0
    # FID/KID of reconstructions and compositions against the validation images; skipped with a
    # note in eval_results.json when the Inception weights are not found.
    c.eval.fid = True
    c.eval.fid_mode = "clean"  # "clean" (clean-fid) or "legacy_pytorch" (pytorch-fid)
    c.eval.fid_weights = ""  # empty: $SLOT_JAX_INCEPTION_WEIGHTS, then ~/.cache/slot_jax
    c.eval.fid_batch_size = 50
    return c


def _tetrominoes(c):
    c.data.name = "tetrominoes"
    c.data.global_batch_size = 64
    c.model.num_slots = 4
    c.model.encoder.strides = (1, 1, 1, 1)
    c.model.encoder.mlp_features = (64, 64)
    c.model.decoder.broadcast_size = (35, 35)
    c.model.decoder.channels = (32, 32, 32)
    c.model.decoder.kernel_sizes = (5, 5, 5)
    c.model.decoder.strides = (1, 1, 1)
    c.train.learning_rate = 4e-4
    c.train.schedule = "warmup_exp_decay"
    c.train.warmup_steps = 1_000
    c.train.num_steps = 100_000
    c.train.eval_every = 2_000
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "report"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of slot_attention.py; choose one of {', '.join(VARIANTS)}")
    c = _base()
    if variant == "scenes":
        c.model.num_slots = 11
        c.data.global_batch_size = 64
        c.train.learning_rate = 4e-4
        c.train.schedule = "warmup_exp_decay"
        c.train.num_steps = 500_000
        c.train.eval_every = 5_000
    elif variant == "tetrominoes":
        _tetrominoes(c)
    elif variant == "multi_dsprites":
        c.data.name = "multi_dsprites"
        c.data.global_batch_size = 64
        c.model.num_slots = 6
        c.model.encoder.strides = (1, 1, 1, 1)
        c.model.decoder.broadcast_size = (8, 8)
        c.model.decoder.channels = (64, 64, 64, 64)
        c.model.decoder.kernel_sizes = (5, 5, 5, 5)
        c.model.decoder.strides = (2, 2, 2, 1)
        c.train.learning_rate = 4e-4
        c.train.schedule = "warmup_exp_decay"
        c.train.num_steps = 500_000
        c.train.eval_every = 5_000
    elif variant == "quick":
        _tetrominoes(c)
        c.data.global_batch_size = 32
        c.model.slot_size = 32
        c.model.mlp_hidden = 64
        c.model.encoder.channels = (32, 32, 32, 32)
        c.model.decoder.channels = (32, 32)
        c.model.decoder.kernel_sizes = (3, 3)
        c.model.decoder.strides = (1, 1)
        c.train.warmup_steps = 200
        c.train.decay_steps = 10_000
        c.train.num_steps = 900  # ~10 minutes on 2 CPU cores; objects separate after ~3,000 steps
        c.train.log_every = 25
        c.train.eval_every = 300
        c.train.checkpoint_every = 300
        c.eval.num_examples = 256
    return c
