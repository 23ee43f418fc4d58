"""The kinds of experiment a config can describe, chosen by `config.kind`."""
from slot_jax.errors import UserError

KINDS = ("slot_autoencoder", "vae", "slot_diffusion")


def build_experiment(config, devices=None):
    kind = config.get("kind", "slot_autoencoder")
    if kind == "slot_autoencoder":
        from slot_jax.training.experiment import Experiment
        return Experiment(config, devices)
    if kind == "vae":
        from slot_jax.training.vae_experiment import VAEExperiment
        return VAEExperiment(config, devices)
    if kind == "slot_diffusion":
        from slot_jax.training.diffusion_experiment import DiffusionExperiment
        return DiffusionExperiment(config, devices)
    raise UserError(f"config.kind={kind!r}: choose one of {', '.join(KINDS)}")
