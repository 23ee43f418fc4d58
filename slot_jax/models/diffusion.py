"""Gaussian diffusion: noise schedules, the forward process, the epsilon / v / sample output
parameterisations, and the DDPM, DDIM and DPM-Solver++(2M) samplers.

Timesteps are 0-based integers t in [0, T), as in diffusers:
x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps with ab = alphas_cumprod. A step's target timestep
prev_t = -1 stands for the clean data (ab = 1).
Every step function is pure and jit-able and agrees with the matching diffusers scheduler's `step`
(see tests/models/test_diffusion.py).
"""
import math
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from slot_jax.errors import UserError

SCHEDULE_KINDS = ("linear", "sqrt_linear", "cosine")
PREDICTIONS = ("epsilon", "v", "sample")
SAMPLERS = ("ddpm", "ddim", "dpm_solver++")
SPACINGS = ("leading", "trailing", "linspace")
MAX_COSINE_BETA = 0.999  # Nichol & Dhariwal: keeps the last steps from becoming singular
MIN_POSTERIOR_VARIANCE = 1e-20


@flax.struct.dataclass
class NoiseSchedule:
    """betas[t] and alphas_cumprod[t] = prod_{s <= t} (1 - betas[s]): float32 arrays of length T."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}: use one of {', '.join(choices)}")


def _cosine_alpha_bar(fraction: np.ndarray) -> np.ndarray:
    return np.cos((fraction + 0.008) / 1.008 * np.pi / 2) ** 2


def _betas(kind: str, num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    if kind == "cosine":
        alpha_bar = _cosine_alpha_bar(np.arange(num_steps + 1, dtype=np.float64) / num_steps)
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], MAX_COSINE_BETA)
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise UserError(f"betas must lie in (0, 1), got beta_start={beta_start}, "
                        f"beta_end={beta_end}: pass values such as beta_start=1e-4, beta_end=0.02")
    if kind == "linear":
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=np.float64) ** 2


def make_schedule(kind: str, num_steps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> NoiseSchedule:
    """kind: "linear" (Ho et al. 2020; diffusers "linear"), "sqrt_linear" (linear in sqrt(beta),
    as in LDM / SlotDiffusion; diffusers "scaled_linear") or "cosine" (Nichol & Dhariwal 2021;
    diffusers "squaredcos_cap_v2"; it ignores beta_start / beta_end)."""
    _check_choice("noise schedule", kind, SCHEDULE_KINDS)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise UserError(f"schedule num_steps {num_steps!r} must be a positive integer: "
                        f"use e.g. 1000")
    # float64 so that the 1000-term cumulative product does not accumulate float32 rounding.
    betas = _betas(kind, int(num_steps), beta_start, beta_end)
    return NoiseSchedule(betas=jnp.asarray(betas, jnp.float32),
                         alphas_cumprod=jnp.asarray(np.cumprod(1 - betas), jnp.float32))


def _per_example(values, like: jax.Array) -> jax.Array:
    """A scalar or [B] array reshaped to broadcast against `like` [B, ...]."""
    values = jnp.asarray(values)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def _alpha_bar(schedule: NoiseSchedule, t, like: jax.Array, final: float = 1.0) -> jax.Array:
    """alphas_cumprod[t], and `final` where t < 0 (past the last step)."""
    t = jnp.asarray(t)
    values = jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], final)
    return _per_example(values, like)


def _signal_and_noise_scales(schedule: NoiseSchedule, t, like: jax.Array):
    alpha_bar = _alpha_bar(schedule, t, like)
    return jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar)


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """x_t ~ q(x_t | x0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
    signal, noise_scale = _signal_and_noise_scales(schedule, t, x0)
    return signal * x0 + noise_scale * noise


def velocity(schedule: NoiseSchedule, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """The v-prediction target (Salimans & Ho 2022): sqrt(ab_t) noise - sqrt(1 - ab_t) x0."""
    signal, noise_scale = _signal_and_noise_scales(schedule, t, x0)
    return signal * noise - noise_scale * x0


def predict_x0(schedule: NoiseSchedule, x_t: jax.Array, t, output: jax.Array,
               prediction: str) -> jax.Array:
    """The clean sample implied by a network output of kind `prediction` at x_t."""
    _check_choice("prediction", prediction, PREDICTIONS)
    signal, noise_scale = _signal_and_noise_scales(schedule, t, x_t)
    if prediction == "epsilon":
        return (x_t - noise_scale * output) / signal
    if prediction == "v":
        return signal * x_t - noise_scale * output
    return output


def predict_eps(schedule: NoiseSchedule, x_t: jax.Array, t, output: jax.Array,
                prediction: str) -> jax.Array:
    """The noise implied by a network output of kind `prediction` at x_t."""
    _check_choice("prediction", prediction, PREDICTIONS)
    signal, noise_scale = _signal_and_noise_scales(schedule, t, x_t)
    if prediction == "epsilon":
        return output
    if prediction == "v":
        return signal * output + noise_scale * x_t
    return (x_t - signal * output) / noise_scale


def training_target(schedule: NoiseSchedule, x0: jax.Array, t, noise: jax.Array,
                    prediction: str) -> jax.Array:
    """What a network of kind `prediction` is regressed onto for x_t = q_sample(x0, t, noise)."""
    _check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "epsilon":
        return noise
    if prediction == "v":
        return velocity(schedule, x0, t, noise)
    return x0


def sample_training_inputs(schedule: NoiseSchedule, x0: jax.Array, key: jax.Array):
    """(t, noise, x_t) for one training step: t ~ U{0, ..., T-1} per example, noise ~ N(0, I)."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    return t, noise, q_sample(schedule, x0, t, noise)


def per_example_mse(output: jax.Array, target: jax.Array) -> jax.Array:
    """[B] mean squared error over all but the leading axis."""
    return jnp.mean(jnp.square(output - target), axis=tuple(range(1, output.ndim)))


def _clip(x0: jax.Array, clip_sample: bool, clip_range: float) -> jax.Array:
    return jnp.clip(x0, -clip_range, clip_range) if clip_sample else x0


def ddpm_step_with_noise(schedule: NoiseSchedule, output: jax.Array, t, x_t: jax.Array,
                         noise: jax.Array, prediction: str, clip_sample: bool = False,
                         clip_range: float = 1.0, prev_t=None) -> jax.Array:
    """One ancestral step x_t -> x_{prev_t} (Ho et al. 2020): a draw from the posterior
    q(x_prev | x_t, x0_hat) with its own variance ("fixed_small"), given the standard normal draw.

    prev_t defaults to t - 1; a strided sampler passes its next timestep (-1 after the last one),
    and the step then uses the effective beta 1 - ab_t / ab_prev.
    """
    t = jnp.asarray(t)
    prev_t = t - 1 if prev_t is None else jnp.asarray(prev_t)
    x0 = _clip(predict_x0(schedule, x_t, t, output, prediction), clip_sample, clip_range)
    alpha_bar = _alpha_bar(schedule, t, x_t)
    alpha_bar_prev = _alpha_bar(schedule, prev_t, x_t)
    step_alpha = alpha_bar / alpha_bar_prev
    step_beta = 1 - step_alpha
    x0_coefficient = jnp.sqrt(alpha_bar_prev) * step_beta / (1 - alpha_bar)
    x_t_coefficient = jnp.sqrt(step_alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * step_beta
    variance = jnp.maximum(variance, MIN_POSTERIOR_VARIANCE)
    # Algorithm 2 returns the posterior mean at t = 0: no noise is added to the final sample.
    std = jnp.where(_per_example(t, x_t) > 0, jnp.sqrt(variance), 0.0)
    return x0_coefficient * x0 + x_t_coefficient * x_t + std * noise


def ddpm_step(schedule: NoiseSchedule, output: jax.Array, t, x_t: jax.Array, key: jax.Array,
              prediction: str, clip_sample: bool = False, clip_range: float = 1.0,
              prev_t=None) -> jax.Array:
    """`ddpm_step_with_noise` with its noise drawn from `key`."""
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    return ddpm_step_with_noise(schedule, output, t, x_t, noise, prediction, clip_sample,
                                clip_range, prev_t)


def ddim_step(schedule: NoiseSchedule, output: jax.Array, t, prev_t, x_t: jax.Array, eta: float,
              noise: Optional[jax.Array], prediction: str, clip_sample: bool = False,
              clip_range: float = 1.0, final_alpha_cumprod: float = 1.0) -> jax.Array:
    """One DDIM step x_t -> x_{prev_t} (Song et al. 2021, eq. 12) with
    sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev): eta = 0 is the
    deterministic sampler, eta = 1 the DDPM posterior. prev_t < 0 uses
    ab_prev = final_alpha_cumprod.
    `noise` (standard normal, or None for none) only matters when eta > 0.
    """
    alpha_bar = _alpha_bar(schedule, t, x_t)
    alpha_bar_prev = _alpha_bar(schedule, prev_t, x_t, final_alpha_cumprod)
    x0 = _clip(predict_x0(schedule, x_t, t, output, prediction), clip_sample, clip_range)
    # The direction term uses the unclipped prediction's noise, as diffusers does by default.
    eps = predict_eps(schedule, x_t, t, output, prediction)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    std = eta * jnp.sqrt(variance)
    direction = jnp.sqrt(jnp.maximum(1 - alpha_bar_prev - std ** 2, 0.0)) * eps
    x_prev = jnp.sqrt(alpha_bar_prev) * x0 + direction
    return x_prev if noise is None else x_prev + std * noise


def _half_log_snr(alpha: jax.Array, sigma: jax.Array) -> jax.Array:
    return jnp.log(alpha) - jnp.log(sigma)


def dpm_solver_step(schedule: NoiseSchedule, output: jax.Array, t, prev_t, x_t: jax.Array,
                    prediction: str, last_x0: jax.Array, last_t, second_order,
                    clip_sample: bool = False, clip_range: float = 1.0):
    """One DPM-Solver++(2M) step x_t -> x_{prev_t} (Lu et al. 2022, Algorithm 2, midpoint form).

    With `second_order` (a bool, may be traced) the data predictions at t and at the previously
    evaluated timestep last_t > t (`last_x0`) give the multistep update; without, the first-order
    update (DDIM, eta = 0) that starts and, for stability, ends the chain. Returns (x_prev, x0):
    the x0 is the next step's `last_x0`.
    """
    x0 = _clip(predict_x0(schedule, x_t, t, output, prediction), clip_sample, clip_range)
    alpha, sigma = _signal_and_noise_scales(schedule, t, x_t)
    alpha_prev, sigma_prev = _signal_and_noise_scales(schedule, prev_t, x_t)
    alpha_last, sigma_last = _signal_and_noise_scales(schedule, last_t, x_t)
    half_log_snr = _half_log_snr(alpha, sigma)
    h = _half_log_snr(alpha_prev, sigma_prev) - half_log_snr
    h_last = half_log_snr - _half_log_snr(alpha_last, sigma_last)
    # h is infinite on the step to clean data and h_last meaningless on the first step:
    # both are kept out of the ratio so that no inf * 0 appears.
    ratio = jnp.where(second_order, h / jnp.where(second_order, h_last, 1.0), 0.0)
    x0_extrapolated = x0 + 0.5 * ratio * (x0 - last_x0)
    exp_minus_h = (sigma_prev * alpha) / (alpha_prev * sigma)
    x_prev = (sigma_prev / sigma) * x_t + alpha_prev * (1 - exp_minus_h) * x0_extrapolated
    return x_prev, x0


def _check_sampler_steps(num_steps: int, max_steps: int, why: str) -> None:
    if not 1 <= num_steps <= max_steps:
        raise UserError(f"sampler steps {num_steps} out of range: use 1..{max_steps} ({why})")


def _spaced_timesteps(num_train_steps: int, num_steps: int, spacing: str) -> np.ndarray:
    if spacing == "leading":
        timesteps = np.arange(num_steps)[::-1] * (num_train_steps // num_steps)
    elif spacing == "trailing":
        # arange's float stride rounds as diffusers does; it can yield one extra, near-zero
        # point (diffusers then visits t = -1), hence the cut to num_steps.
        stride = num_train_steps / num_steps
        timesteps = np.round(np.arange(num_train_steps, 0, -stride)[:num_steps]) - 1
    else:
        timesteps = np.round(np.linspace(0, num_train_steps - 1, num_steps))[::-1]
    return timesteps.astype(np.int32)


def sampling_timesteps(num_train_steps: int, num_steps: int,
                       spacing: str = "leading") -> np.ndarray:
    """The decreasing timesteps a DDPM / DDIM sampler of `num_steps` steps visits, spaced as
    diffusers' `set_timesteps` (steps_offset=0) spaces them: "leading" k * (T // n), "trailing" down
    from T - 1 in strides of T / n, "linspace" n rounded points evenly spread over [0, T - 1]."""
    _check_choice("timestep spacing", spacing, SPACINGS)
    _check_sampler_steps(num_steps, num_train_steps, "the schedule's num_steps")
    return _spaced_timesteps(num_train_steps, num_steps, spacing)


def dpm_solver_timesteps(num_train_steps: int, num_steps: int,
                         spacing: str = "leading") -> np.ndarray:
    """The timesteps of DPM-Solver++, spaced as diffusers' DPMSolverMultistepScheduler spaces them:
    "trailing" as `sampling_timesteps`; "leading" and "linspace" space n + 1 points and drop the
    last one, t = 0, because the log-SNR rises so steeply there that a second-order step into
    t = 0 overshoots (the final step goes straight to the clean data instead)."""
    _check_choice("timestep spacing", spacing, SPACINGS)
    if spacing == "trailing":
        return sampling_timesteps(num_train_steps, num_steps, spacing)
    _check_sampler_steps(num_steps, num_train_steps - 1,
                         f"dpm_solver++ with {spacing} spacing leaves out t = 0")
    return _spaced_timesteps(num_train_steps, num_steps + 1, spacing)[:-1]


def sample(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: NoiseSchedule,
           shape, key: jax.Array, *, sampler: str = "ddim", num_steps: int = 50, eta: float = 0.0,
           prediction: str = "epsilon", clip_sample: bool = False, clip_range: float = 1.0,
           spacing: str = "leading", initial_noise: Optional[jax.Array] = None) -> jax.Array:
    """Draws x_T ~ N(0, I) of `shape` [B, ...] (or starts from `initial_noise`) and denoises it in
    `num_steps` steps of `sampler`.

    denoise_fn(x_t, t) -> output, t an int32 [B] array, output of kind `prediction`. Step i draws
    its noise from fold_in(key, i), so a fixed key gives a fixed sample. eta only affects DDIM.
    DDPM with num_steps == T is Ho et al.'s Algorithm 2. Each step goes from one timestep of
    `sampling_timesteps` (`dpm_solver_timesteps` for DPM-Solver++) to the next, and from the last
    one to the clean data.
    """
    _check_choice("sampler", sampler, SAMPLERS)
    _check_choice("prediction", prediction, PREDICTIONS)
    spaced = dpm_solver_timesteps if sampler == "dpm_solver++" else sampling_timesteps
    timesteps = spaced(schedule.num_steps, num_steps, spacing)
    prev_timesteps = np.append(timesteps[1:], -1)
    last_timesteps = np.insert(timesteps[:-1], 0, timesteps[0])  # unused by the first step
    init_key, step_key = jax.random.split(key)
    if initial_noise is None:
        initial_noise = jax.random.normal(init_key, shape, jnp.float32)
    clip = dict(clip_sample=clip_sample, clip_range=clip_range)

    def advance(carry, step):
        x, last_x0 = carry
        i, t, prev_t, last_t = step
        output = denoise_fn(x, jnp.full((shape[0],), t, jnp.int32))
        noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, x.dtype)
        if sampler == "ddpm":
            return (ddpm_step_with_noise(schedule, output, t, x, noise, prediction, prev_t=prev_t,
                                         **clip), last_x0), None
        if sampler == "ddim":
            return (ddim_step(schedule, output, t, prev_t, x, eta, noise, prediction, **clip),
                    last_x0), None
        second_order = (i > 0) & (i < num_steps - 1)
        return dpm_solver_step(schedule, output, t, prev_t, x, prediction, last_x0, last_t,
                               second_order, **clip), None

    steps = tuple(jnp.asarray(a, jnp.int32) for a in
                  (np.arange(num_steps), timesteps, prev_timesteps, last_timesteps))
    (x0, _), _ = jax.lax.scan(advance, (initial_noise, jnp.zeros(shape, jnp.float32)), steps)
    return x0
