"""The whole report as one job (configs/diffusion.py): Part 1, the Slot Attention autoencoder, in
WORKDIR/autoencoder; the VAE in WORKDIR/vae (or config.vae_workdir); the slot-conditioned latent
diffusion model in WORKDIR; then WORKDIR/report.md from the runs' own results.

Each stage resumes from its checkpoints; a stage whose evaluation is complete is not rerun.
"""
import json
import pathlib

import jax

from slot_jax.data.builtin import get_dataset
from slot_jax.report import write_report
from slot_jax.training.checkpoint import Checkpointer
from slot_jax.training.diffusion_experiment import check_diffusion_config
from slot_jax.training.experiment import check_config, dataset_info, prepare_workdir
from slot_jax.training.loop import evaluate_latest, train
from slot_jax.training.workdir_lock import hold_workdir


def stage_workdirs(config, workdir: pathlib.Path) -> dict:
    vae = pathlib.Path(config.vae_workdir) if config.vae_workdir else workdir / "vae"
    stages = {"autoencoder": workdir / "autoencoder", "vae": vae, "diffusion": workdir}
    if not config.run_autoencoder:
        del stages["autoencoder"]
    return stages


def stage_configs(config, workdirs: dict) -> dict:
    configs = {"autoencoder": config.autoencoder, "vae": config.vae, "diffusion": config}
    with config.unlocked():
        config.vae_workdir = str(workdirs["vae"].absolute())
    return {name: configs[name] for name in workdirs}


def completed(stage_config, workdir: pathlib.Path) -> bool:
    """Trained to the configured step and evaluated there."""
    results = workdir / "eval_results.json"
    if not results.is_file():
        return False
    try:
        return json.loads(results.read_text()).get("step") == stage_config.train.num_steps
    except (OSError, json.JSONDecodeError):
        return False


def check_all(config, workdirs: dict, configs: dict) -> None:
    """Every stage's config, and the checkpoints already in the stages' workdirs, are checked
    before the first stage trains: a mismatch must not surface after an hour of training, and a
    finished stage must not be skipped when its config has changed."""
    num_devices = len(jax.devices())
    if config.run_autoencoder:
        check_config(config.autoencoder, dataset_info(config.autoencoder), num_devices)
    check_diffusion_config(config, get_dataset(config.data.name), num_devices)
    for name, stage_workdir in workdirs.items():
        if not (stage_workdir / "checkpoints").is_dir():
            continue
        checkpointer = Checkpointer(stage_workdir, async_save=False)
        try:
            if checkpointer.latest_step() is not None:
                checkpointer.check_architecture(configs[name])
        finally:
            checkpointer.close()


def run_pipeline(config, workdir, mode: str) -> dict:
    workdirs = stage_workdirs(config, pathlib.Path(workdir))
    configs = stage_configs(config, workdirs)
    check_all(config, workdirs, configs)
    workdir = prepare_workdir(workdir, create=mode == "train")
    chief = jax.process_index() == 0  # one process speaks for a multi-process run
    with hold_workdir(workdir, enabled=chief):  # the stages hold their own: the VAE's may be shared
        return _run_stages(config, workdir, workdirs, configs, mode, chief)


def _run_stages(config, workdir, workdirs: dict, configs: dict, mode: str, chief: bool) -> dict:
    results = {}
    for name, stage_workdir in workdirs.items():
        stage_config = configs[name]
        if mode == "train" and completed(stage_config, stage_workdir):
            if chief:
                print(f"[{name}] trained and evaluated at step {stage_config.train.num_steps} already: "
                      f"reusing {stage_workdir / 'eval_results.json'}", flush=True)
            results[name] = json.loads((stage_workdir / "eval_results.json").read_text())
            continue
        if chief:
            print(f"[{name}] {'training' if mode == 'train' else 'evaluating'} in {stage_workdir}", flush=True)
        results[name] = (train if mode == "train" else evaluate_latest)(stage_config, stage_workdir)
    if chief:
        path = write_report(config, workdir, workdirs)
        print(f"report written to {path}", flush=True)
    return results
