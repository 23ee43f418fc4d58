"""The training loop around the pure train step."""
import time

import jax
import numpy as np

from slot_jax.data.pipeline import BatchIterator
from slot_jax.errors import UserError
from slot_jax.training import mesh as mesh_lib
from slot_jax.training.checkpoint import Checkpointer
from slot_jax.training.experiment import prepare_workdir, slow_dtype_note, write_atomically
from slot_jax.training.kinds import build_experiment
from slot_jax.training.optimizer import Plateau, plateau_step
from slot_jax.training.stopping import StopRequests, Stopped
from slot_jax.training.workdir_lock import hold_workdir
from slot_jax.training.writers import MetricWriter, Progress


def _mean_metrics(window: list) -> dict:
    stacked = jax.device_get(window)
    return {key: float(np.mean([m[key] for m in stacked])) for key in stacked[0]}


def train(config, workdir) -> dict:
    """Trains (resuming from the workdir's latest checkpoint), then evaluates. Returns eval results."""
    experiment = build_experiment(config)  # checks the config before anything is written
    workdir = prepare_workdir(workdir, create=True)
    with hold_workdir(workdir, enabled=jax.process_index() == 0):
        return _train(experiment, config, workdir)


def _train(experiment, config, workdir) -> dict:
    is_chief = jax.process_index() == 0
    note = slow_dtype_note(config, jax.default_backend())
    if note and is_chief:
        print(note, flush=True)
    checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(experiment.abstract_state(), config)
    else:
        state = experiment.init_state()
    start_step = int(jax.device_get(state.step))
    config_file = workdir / "config.json"
    if is_chief and not config_file.exists():  # a failing rerun must not replace the record; see below
        write_atomically(config_file, config.to_json_best_effort(indent=2))
    writer = MetricWriter(workdir, enabled=is_chief)
    progress = Progress(config.train.num_steps, start_step, enabled=is_chief)
    batches = BatchIterator(experiment.info, "train", config.data.global_batch_size, config.data.seed,
                            start_step=start_step, process_index=jax.process_index(),
                            process_count=jax.process_count())
    window, started = [], time.perf_counter()
    try:
        with StopRequests() as requests:
            for step in range(start_step + 1, config.train.num_steps + 1):
                state, metrics = experiment.train_step(state, mesh_lib.global_batch(next(batches), experiment.mesh))
                window.append(metrics)
                stopping = requests.reached(step)
                saving = step % config.train.checkpoint_every == 0 or step == config.train.num_steps or stopping
                if step % config.train.log_every == 0 or saving:
                    log_window(experiment, state, step, window, writer, progress, checkpointer)
                    window = []
                if step % config.train.eval_every == 0:  # also when stopping: a resumed run must
                    summary = experiment.validate(state.params)  # see the same plateau decisions
                    writer.write(step, summary)
                    if config.train.schedule == "plateau":
                        state = apply_plateau(config, state, summary["val/loss"])
                if saving:
                    checkpointer.save(state, config)
                if stopping:  # the finally clause below waits for the save
                    raise Stopped(step, requests.cause, checkpointer.directory / str(step), requests.exit_status)
    finally:
        checkpointer.wait()
        batches.close()
        writer.close()
    if is_chief:
        write_atomically(config_file, config.to_json_best_effort(indent=2))
        elapsed = time.perf_counter() - started
        print(f"trained steps {start_step}..{config.train.num_steps} in {elapsed:.0f} s", flush=True)
    results = experiment.evaluate(workdir, state)
    checkpointer.close()
    return results


def log_window(experiment, state, step, window, writer, progress, checkpointer) -> None:
    """Writes the mean metrics of the steps since the last log; refuses a NaN/inf loss among them."""
    scalars = _mean_metrics(window)
    if scalars.pop("nonfinite") > 0:
        raise UserError(f"loss became NaN/inf before step {step} (nothing saved after step "
                        f"{checkpointer.latest_step()}): lower config.train.learning_rate or set "
                        "config.train.grad_clip_norm")
    scalars["learning_rate"] = float(experiment.schedule(step)) * float(state.lr_scale)
    progress.update(step, {"loss": scalars["loss"]})
    writer.write(step, scalars)


def apply_plateau(config, state, val_loss: float):
    t = config.train
    plateau = plateau_step(
        Plateau(float(state.plateau_best), int(state.plateau_bad_evals), float(state.lr_scale)), val_loss,
        factor=t.plateau_factor, patience=t.plateau_patience, threshold=t.plateau_threshold,
        min_scale=t.min_learning_rate / t.learning_rate)
    put = lambda value, dtype: jax.device_put(np.asarray(value, dtype), state.lr_scale.sharding)
    return state.replace(lr_scale=put(plateau.lr_scale, np.float32), plateau_best=put(plateau.best, np.float32),
                         plateau_bad_evals=put(plateau.bad_evals, np.int32))


def restore_latest(experiment, workdir, *, step=None, saved_config=None):
    """The workdir's latest train state (or `step`'s). `saved_config`, when the experiment's differs
    from the one that trained (another slot count), is the one its architecture is checked against."""
    checkpointer = Checkpointer(workdir, keep=experiment.config.train.keep_checkpoints, async_save=False)
    try:
        if checkpointer.latest_step() is None:
            raise UserError(f"no checkpoint in {workdir / 'checkpoints'}: train first with --mode=train")
        return checkpointer.restore(experiment.abstract_state(), saved_config or experiment.config, step)
    finally:
        checkpointer.close()


def evaluate_latest(config, workdir) -> dict:
    """Scores the workdir's latest checkpoint (`--mode=eval`)."""
    workdir = prepare_workdir(workdir, create=False)
    experiment = build_experiment(config)
    with hold_workdir(workdir, enabled=jax.process_index() == 0):
        return experiment.evaluate(workdir, restore_latest(experiment, workdir))
