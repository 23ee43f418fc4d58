"""An experiment: the model, optimizer, mesh and jitted steps that one config defines."""
import functools
import os
import pathlib
import tempfile

import jax
import numpy as np

from slot_jax import cpu
from slot_jax.data.builtin import get_dataset
from slot_jax.errors import UserError
from slot_jax.evaluation.composition import SAMPLING_MODES
from slot_jax.evaluation.fid_score import MODES as FID_MODES
from slot_jax.evaluation.inception import resolve_weights_path
from slot_jax.models.autoencoder import COMPUTE_DTYPES, build_autoencoder
from slot_jax.models.conv import CONV_IMPLS
from slot_jax.models.decoder import UPSAMPLE_IMPLS
from slot_jax.training import mesh as mesh_lib
from slot_jax.training.optimizer import SCHEDULES, build_optimizer, build_schedule
from slot_jax.training.state import create_train_state
from slot_jax.training.step import eval_step, train_step

EVAL_SEED_OFFSET = 1_000_003  # the eval slot-init noise is fixed, and unlike any train step's


def dataset_info(config):
    try:
        return get_dataset(config.data.name)
    except ValueError as error:
        raise UserError(f"config.data.name: {error}") from None


def require(ok, message):
    if not ok:
        raise UserError(message)


def check_common(config, num_devices: int) -> None:
    """Checks shared by every kind of experiment: batches, optimisation, evaluation size."""
    t = config.train
    for key, value in (("data.global_batch_size", config.data.global_batch_size),
                       ("eval.batch_size", config.eval.batch_size)):
        require(value > 0 and value % num_devices == 0,
                 f"config.{key}={value} must be a positive multiple of the {num_devices} devices")
    require(t.num_steps > 0, f"config.train.num_steps={t.num_steps} must be positive")
    require(t.learning_rate > 0, f"config.train.learning_rate={t.learning_rate} must be positive")
    require(t.schedule in SCHEDULES, f"config.train.schedule={t.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        require(t[key] > 0, f"config.train.{key}={t[key]} must be positive")
    require(config.eval.num_examples > 0, "config.eval.num_examples must be positive")


def check_slot_encoder(m) -> None:
    require(m.num_slots > 0 and m.slot_size > 0 and m.num_iterations > 0,
             "config.model.num_slots, slot_size and num_iterations must be positive")
    require(m.slot_init in ("gaussian", "learned"),
             f"config.model.slot_init={m.slot_init!r}: choose 'gaussian' or 'learned'")
    lengths = {k: len(m.encoder[k]) for k in ("channels", "kernel_sizes", "strides")}
    require(len(set(lengths.values())) == 1,
             f"config.model.encoder: channels, kernel_sizes and strides need one entry per layer, got {lengths}")
    require(m.conv_impl in CONV_IMPLS,
             f"config.model.conv_impl={m.conv_impl!r}: choose one of {', '.join(CONV_IMPLS)}")
    dtype = m.get("compute_dtype", "float32")
    require(dtype in COMPUTE_DTYPES,
            f"config.model.compute_dtype={dtype!r}: choose one of {', '.join(COMPUTE_DTYPES)}")


def slow_dtype_note(config, backend: str, description: dict | None = None):
    """A note where config.model.compute_dtype=bfloat16 would train slower than float32: on a CPU
    without native bf16 dot products oneDNN has no bf16 convolution and XLA's bf16 kernels ran
    the Slot Attention step 1.25-1.75x slower than float32 (2-core AMD EPYC, AVX2). None otherwise."""
    if backend != "cpu" or config.model.get("compute_dtype", "float32") != "bfloat16":
        return None
    description = description or cpu.describe()
    if cpu.has_native_bf16(description):
        return None
    isa = ", ".join(description["vector_isa"]) or "no vector extensions listed"
    return (f"note: config.model.compute_dtype=bfloat16 on a CPU without native bf16 ({description['model']}: "
            f"{isa}) trains slower than float32 (1.25-1.75x on such a CPU); set it to float32 for speed")


def check_generation(e) -> None:
    """config.eval's compositional generation and FID settings."""
    require(e.num_clusters > 0 and e.kmeans_restarts > 0 and e.num_compositions > 0,
             "config.eval.num_clusters, kmeans_restarts and num_compositions must be positive")
    require(e.composition_mode in SAMPLING_MODES,
             f"config.eval.composition_mode={e.composition_mode!r}: choose one of {', '.join(SAMPLING_MODES)}")
    require(e.fid_mode in FID_MODES, f"config.eval.fid_mode={e.fid_mode!r}: choose one of {', '.join(FID_MODES)}")
    require(e.fid_batch_size > 0, "config.eval.fid_batch_size must be positive")
    if e.fid and e.fid_weights:
        resolve_weights_path(e.fid_weights)  # a configured path must exist: fail now, not after training
    require(not e.fid or (e.num_examples >= 2 and e.num_compositions >= 2),
             "FID needs at least 2 images per set: raise config.eval.num_examples and num_compositions, "
             "or set config.eval.fid=False")


def check_config(config, info, num_devices: int) -> None:
    """Refuses autoencoder configs that would fail late or silently train something else."""
    check_common(config, num_devices)
    m = config.model
    check_slot_encoder(m)
    lengths = {k: len(m.decoder[k]) for k in ("channels", "kernel_sizes", "strides")}
    require(len(set(lengths.values())) == 1,
             f"config.model.decoder: channels, kernel_sizes and strides need one entry per layer, got {lengths}")
    scale = int(np.prod(m.decoder.strides))
    out = tuple(b * scale for b in m.decoder.broadcast_size)
    require(out == tuple(info.image_size),
             f"config.model.decoder: broadcast_size {tuple(m.decoder.broadcast_size)} x strides {scale} gives "
             f"{out}, but {info.name} images are {tuple(info.image_size)}")
    require(m.decoder.upsample in UPSAMPLE_IMPLS,
             f"config.model.decoder.upsample={m.decoder.upsample!r}: choose one of {', '.join(UPSAMPLE_IMPLS)}")
    check_generation(config.eval)


def prepare_workdir(workdir, *, create: bool) -> pathlib.Path:
    path = pathlib.Path(workdir)
    if not path.exists():
        if not create:
            raise UserError(f"workdir {path} does not exist: train into it first")
        try:
            path.mkdir(parents=True)
        except OSError as error:
            raise UserError(f"cannot create workdir {path}: {error.strerror}") from None
    if not path.is_dir():
        raise UserError(f"workdir {path} is not a directory")
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"workdir {path} is not writable: choose another --workdir")
    return path


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Readers never see a half-written file, and a failure leaves the old one in place."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
        file.write(text)
    os.replace(file.name, path)


class ExperimentBase:
    """Mesh, optimizer and jitted steps built once from a config; each kind of model adds its
    own checks, model and steps in `build`, and its own `validate` and `evaluate`."""

    kind = ""

    def __init__(self, config, devices=None):
        self.config = config
        self.info = dataset_info(config)
        self.mesh = mesh_lib.make_mesh(devices)
        self.check(config)
        self.optimizer = build_optimizer(config.train)
        self.schedule = build_schedule(config.train)  # for logging; the optimizer holds its own copy
        self.image_shape = (1, *self.info.image_size, 3)
        self.replicated = mesh_lib.replicated(self.mesh)
        self.data_sharded = mesh_lib.data_sharded(self.mesh)
        self.build()

    def check(self, config) -> None:
        raise NotImplementedError

    def build(self) -> None:
        """Sets self.model, self._init (rng -> state), self.train_step and self.eval_step."""
        raise NotImplementedError

    def init_state(self):
        return self._init(jax.random.PRNGKey(self.config.seed))

    def abstract_state(self):
        shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0))
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), shapes)

    def eval_rng(self):
        return jax.random.PRNGKey(self.config.seed + EVAL_SEED_OFFSET)

    def eval_slots_rng(self):
        """The key the evaluation draws its initial slots from."""
        return self.eval_rng()

    def validate(self, params) -> dict:
        """Scalars for metrics.jsonl during training."""
        raise NotImplementedError

    def evaluate(self, workdir, state) -> dict:
        """The final evaluation: writes eval_results.json and figures/ into the workdir."""
        raise NotImplementedError


class Experiment(ExperimentBase):
    """The Slot Attention autoencoder (configs/slot_attention.py)."""

    kind = "slot_autoencoder"

    def check(self, config) -> None:
        check_config(config, self.info, self.mesh.size)

    def build(self) -> None:
        repl, data = self.replicated, self.data_sharded
        self.model = build_autoencoder(self.config.model)
        self._init = jax.jit(functools.partial(create_train_state, self.model, self.optimizer, self.image_shape),
                             out_shardings=repl)
        self.train_step = jax.jit(functools.partial(train_step, model=self.model, optimizer=self.optimizer),
                                  in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
        self.eval_step = jax.jit(functools.partial(eval_step, model=self.model, num_true=self.info.max_entities),
                                 in_shardings=(repl, data, repl), out_shardings=(data, data))

    def validate(self, params) -> dict:
        from slot_jax.training.evaluate import evaluate_real_samples, run_validation  # evaluate imports us
        summary, _, _ = run_validation(self, params)
        real_summary, _, _ = evaluate_real_samples(self, params)
        return {**summary, **{k: v for k, v in real_summary.items() if k != "real/skipped"}}

    def evaluate(self, workdir, state) -> dict:
        from slot_jax.training.evaluate import evaluate
        return evaluate(self.config, workdir, state=state, experiment=self)
