"""The train state: everything a resumed run needs, as one pytree."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray  # folded with the step for each train step's slot-init noise
    lr_scale: jnp.ndarray  # ReduceLROnPlateau's factor; 1 for other schedules
    plateau_best: jnp.ndarray
    plateau_bad_evals: jnp.ndarray


def create_train_state(model, optimizer, image_shape, rng) -> TrainState:
    """The autoencoder's initial state; other models build their params and call `state_from_params`."""
    init_rng, slots_rng, train_rng = jax.random.split(rng, 3)
    params = model.init({"params": init_rng, "slots": slots_rng}, jnp.zeros(image_shape, jnp.float32))["params"]
    return state_from_params(params, optimizer, train_rng)


def state_from_params(params, optimizer, rng) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=rng,
        lr_scale=jnp.ones((), jnp.float32),
        plateau_best=jnp.full((), jnp.inf, jnp.float32),
        plateau_bad_evals=jnp.zeros((), jnp.int32),
    )
