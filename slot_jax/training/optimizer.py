"""Optimizer, learning-rate schedules and the validation-driven ReduceLROnPlateau rule.

The plateau rule runs on the host after each evaluation; its state (best loss, bad evaluations,
lr scale) lives in the train state so it is checkpointed and resumed with everything else.
"""
import dataclasses

import optax

from slot_jax.errors import UserError

SCHEDULES = ("constant", "plateau", "warmup_exp_decay", "warmup_cosine", "step_decay")


def build_schedule(train_config) -> optax.Schedule:
    t = train_config
    if t.schedule in ("constant", "plateau"):
        return optax.constant_schedule(t.learning_rate)
    if t.schedule == "warmup_exp_decay":
        # Slot Attention paper: linear warmup, then lr * rate ** (step / decay_steps); the
        # decay counts from step 0, so it already acts during warmup.
        def schedule(step):
            warm = optax.linear_schedule(0.0, 1.0, max(t.warmup_steps, 1))(step)
            return t.learning_rate * warm * t.decay_rate ** (step / t.decay_steps)
        return schedule
    if t.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, t.learning_rate, max(t.warmup_steps, 1), max(t.num_steps, t.warmup_steps + 1),
            end_value=t.min_learning_rate)
    if t.schedule == "step_decay":
        # PyTorch's StepLR: lr * decay_rate ** floor(step / decay_steps), e.g. 0.95 once an epoch.
        return optax.exponential_decay(t.learning_rate, t.decay_steps, t.decay_rate, staircase=True)
    raise UserError(f"config.train.schedule={t.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")


def build_optimizer(train_config) -> optax.GradientTransformation:
    """Adam with optional global-norm clipping; the learning rate comes from the schedule."""
    parts = []
    if train_config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
    parts += [optax.scale_by_adam(), optax.scale_by_learning_rate(build_schedule(train_config))]
    return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class Plateau:
    """PyTorch ReduceLROnPlateau semantics (mode 'min', relative threshold, no cooldown)."""

    best: float
    bad_evals: int
    lr_scale: float


def plateau_step(plateau: Plateau, value: float, *, factor: float, patience: int,
                 threshold: float, min_scale: float) -> Plateau:
    best, bad = plateau.best, plateau.bad_evals
    if value < best * (1.0 - threshold):
        best, bad = value, 0
    else:
        bad += 1
    scale = plateau.lr_scale
    if bad > patience:
        scale, bad = max(scale * factor, min_scale), 0
    return Plateau(best, bad, scale)
