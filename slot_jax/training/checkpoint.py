"""Orbax checkpoints of the train state, tagged with the config that made them.

A checkpoint stores the architecture-defining part of the config (model and dataset) beside the
state; restoring it under a different one is refused with a message that names the keys.
"""
import json
import pathlib

import jax
import orbax.checkpoint as ocp

from slot_jax.errors import UserError


# How a layer is computed, not what: free to differ between the saving and the restoring run
# (parameters are float32 whatever the compute dtype).
LOWERING_KEYS = (("conv_impl",), ("decoder", "upsample"), ("compute_dtype",), ("unet", "conv_impl"))


def architecture_of(config) -> dict:
    """What must match between a checkpoint and the config restoring it."""
    model = json.loads(json.dumps(config.model.to_dict(), default=list))
    for *parents, key in LOWERING_KEYS:
        node = model
        for parent in parents:
            node = node.get(parent, {})
        node.pop(key, None)
    return {"model": model, "data.name": config.data.name}


def _differences(saved, current, prefix=""):
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            yield from _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
    elif saved != current:
        yield f"{prefix.rstrip('.')}: checkpoint {saved!r}, config {current!r}"


class Checkpointer:
    def __init__(self, workdir: pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "architecture"))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, state, config) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            architecture=ocp.args.JsonSave(architecture_of(config))))

    def _unreadable(self, step, error) -> UserError:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        return UserError(f"checkpoint {self.directory / str(step)} cannot be read ({reason}): "
                         "delete that step's directory to fall back to an earlier one, or use a new --workdir")

    def check_architecture(self, config, step=None) -> None:
        step = self.latest_step() if step is None else step
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(
                architecture=ocp.args.JsonRestore()))["architecture"]
        except Exception as error:  # a truncated or foreign directory: any reader error means the same
            raise self._unreadable(step, error) from None
        differences = list(_differences(saved, architecture_of(config)))
        if differences:
            raise UserError(
                f"checkpoint {self.directory / str(step)} was made by a different config "
                f"({'; '.join(differences[:3])}): use a new --workdir or the config that made it")

    def restore(self, abstract_state, config, step=None):
        if step is not None and step not in self.manager.all_steps():
            raise UserError(f"no checkpoint of step {step} in {self.directory}: it has steps "
                            f"{', '.join(map(str, sorted(self.manager.all_steps()))) or 'none'}")
        step = self.latest_step() if step is None else step
        self.check_architecture(config, step)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))
        except (ValueError, KeyError) as error:
            raise UserError(f"checkpoint {self.directory / str(step)} does not fit this config "
                            f"({str(error).splitlines()[0][:200]}): use a new --workdir") from None
        except Exception as error:
            raise self._unreadable(step, error) from None
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
