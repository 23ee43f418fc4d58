"""Diffusion schedules, parameterisations and samplers against their defining formulas, denoisers
with known answers, and the diffusers schedulers."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.errors import UserError
from slot_jax.models import diffusion
from slot_jax.models.diffusion import (ddim_step, ddpm_step, ddpm_step_with_noise,
                                       dpm_solver_step, dpm_solver_timesteps, make_schedule,
                                       per_example_mse, predict_eps, predict_x0, q_sample,
                                       sample_training_inputs, sampling_timesteps,
                                       training_target, velocity)

T = 1000
SHAPE = (2, 4, 4, 3)
KINDS = ("linear", "sqrt_linear", "cosine")
DIFFUSERS_BETAS = {"linear": "linear", "sqrt_linear": "scaled_linear",
                   "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}
# diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array on a torch tensor.
NUMPY_COPY_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@functools.cache
def schedule(kind):
    return make_schedule(kind, T)


def normal(seed, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def cosine_alpha_bar(fraction):
    return math.cos((fraction + 0.008) / 1.008 * math.pi / 2) ** 2


# --- schedules ---

@pytest.mark.parametrize("kind", KINDS)
def test_alphas_cumprod_is_the_cumulative_product_of_one_minus_betas(kind):
    s = schedule(kind)
    expected = np.cumprod(1 - np.asarray(s.betas, np.float64))
    np.testing.assert_allclose(s.alphas_cumprod, expected, rtol=1e-5, atol=1e-9)
    assert s.num_steps == T and s.betas.dtype == s.alphas_cumprod.dtype == jnp.float32


@pytest.mark.parametrize("kind, spaced", [("linear", lambda b: b), ("sqrt_linear", np.sqrt)])
def test_linear_schedules_run_evenly_from_beta_start_to_beta_end(kind, spaced):
    betas = np.asarray(make_schedule(kind, 50, beta_start=1e-3, beta_end=0.04).betas, np.float64)
    np.testing.assert_allclose(betas[[0, -1]], [1e-3, 0.04], rtol=1e-6)
    steps = np.diff(spaced(betas))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-4)


def test_cosine_schedule_follows_nichol_and_dhariwal():
    s = schedule("cosine")
    betas = [min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), 0.999)
             for i in range(T)]
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    # Below the 0.999 cap the product telescopes: alpha_bar(t) = f((t + 1) / T) / f(0).
    uncapped = np.nonzero(np.asarray(betas) < 0.999)[0]
    assert uncapped.size == T - 1
    direct = [cosine_alpha_bar((t + 1) / T) / cosine_alpha_bar(0) for t in uncapped]
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[uncapped], direct, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_steps", [1, 10, T])
def test_betas_lie_in_the_open_unit_interval_and_alphas_cumprod_decreases(kind, num_steps):
    s = make_schedule(kind, num_steps)
    betas, alphas_cumprod = np.asarray(s.betas), np.asarray(s.alphas_cumprod)
    assert betas.shape == alphas_cumprod.shape == (num_steps,)
    assert np.all((betas > 0) & (betas < 1))
    assert np.all(np.diff(alphas_cumprod) < 0) and 0 < alphas_cumprod[-1] <= alphas_cumprod[0] < 1


@pytest.mark.parametrize("args, match", [
    (("quadratic",), "unknown noise schedule 'quadratic'"),
    (("linear", 0), "num_steps 0"),
    (("cosine", 2.5), "num_steps 2.5"),
    (("linear", 10, 0.0), "beta_start=0.0"),
    (("sqrt_linear", 10, -1e-4), "beta_start=-0.0001"),
    (("linear", 10, 1e-4, 1.5), "beta_end=1.5"),
])
def test_bad_schedule_arguments_raise_a_one_line_user_error(args, match):
    with pytest.raises(UserError, match=match) as error:
        make_schedule(*args)
    assert "\n" not in str(error.value) and ": " in str(error.value)


def test_schedule_is_a_pytree_that_jit_accepts():
    s = schedule("linear")
    leaves = jax.tree_util.tree_leaves(s)
    assert len(leaves) == 2
    value = jax.jit(lambda sched: sched.alphas_cumprod[sched.num_steps - 1])(s)
    np.testing.assert_allclose(value, s.alphas_cumprod[-1])


# --- forward process and parameterisations ---

def test_q_sample_scales_data_and_noise_by_their_per_example_coefficients():
    s = schedule("linear")
    x0, noise, t = normal(0), normal(1), jnp.array([0, T - 1])
    ab = np.asarray(s.alphas_cumprod)[[0, T - 1]].reshape(2, 1, 1, 1)
    zeros = np.zeros(SHAPE, np.float32)
    np.testing.assert_allclose(q_sample(s, x0, t, zeros), np.sqrt(ab) * x0, rtol=1e-6)
    np.testing.assert_allclose(q_sample(s, zeros, t, noise), np.sqrt(1 - ab) * noise, rtol=1e-6)
    np.testing.assert_allclose(velocity(s, x0, t, noise),
                               np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0, rtol=1e-5, atol=1e-6)


def test_q_sample_has_the_forward_marginal_mean_and_variance():
    s = schedule("sqrt_linear")
    t = jnp.full((2,), 600)
    noise = jax.random.normal(jax.random.PRNGKey(0), (2, 20000))
    draws = q_sample(s, jnp.full((2, 20000), 0.7), t, noise)
    ab = float(s.alphas_cumprod[600])
    np.testing.assert_allclose(np.mean(draws, axis=1), math.sqrt(ab) * 0.7, atol=0.02)
    np.testing.assert_allclose(np.var(draws, axis=1), 1 - ab, rtol=0.03)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("timesteps, atol", [([100, 700], 1e-5), ([0, T - 1], 2e-3)])
def test_predictions_of_the_training_target_recover_data_and_noise(kind, prediction, timesteps,
                                                                   atol):
    s, x0, noise, t = schedule(kind), normal(2), normal(3), jnp.array(timesteps)
    x_t = q_sample(s, x0, t, noise)
    target = training_target(s, x0, t, noise, prediction)
    # At t = 0 and T - 1 one of sqrt(ab), sqrt(1 - ab) is tiny, which amplifies float32 rounding.
    np.testing.assert_allclose(predict_x0(s, x_t, t, target, prediction), x0, atol=atol)
    np.testing.assert_allclose(predict_eps(s, x_t, t, target, prediction), noise, atol=atol)


def test_unknown_prediction_raises_a_user_error():
    s = schedule("linear")
    with pytest.raises(UserError, match="unknown prediction 'x0': use one of epsilon, v, sample"):
        predict_x0(s, normal(0), jnp.array([1, 2]), normal(1), "x0")


def test_training_inputs_draw_timesteps_in_range_and_noise_the_data_with_them():
    s, x0 = schedule("linear"), normal(4, (64, 2, 2, 1))
    t, noise, x_t = sample_training_inputs(s, x0, jax.random.PRNGKey(0))
    assert t.shape == (64,) and noise.shape == x_t.shape == x0.shape
    assert 0 <= int(t.min()) and int(t.max()) < T and len(np.unique(t)) > 50
    np.testing.assert_allclose(x_t, q_sample(s, x0, t, noise), rtol=1e-6)
    t_other, noise_other, _ = sample_training_inputs(s, x0, jax.random.PRNGKey(1))
    assert not np.array_equal(t, t_other) and not np.allclose(noise, noise_other)


def test_per_example_mse_averages_all_but_the_batch_axis():
    output, target = normal(5), normal(6)
    expected = ((output - target) ** 2).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(per_example_mse(output, target), expected, rtol=1e-6)


# --- timesteps ---

def test_sampling_timesteps_follow_their_spacing():
    np.testing.assert_array_equal(sampling_timesteps(T, 4, "leading"), [750, 500, 250, 0])
    np.testing.assert_array_equal(sampling_timesteps(T, 4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(sampling_timesteps(10, 4, "linspace"), [9, 6, 3, 0])
    np.testing.assert_array_equal(sampling_timesteps(T, T), np.arange(T)[::-1])
    np.testing.assert_array_equal(dpm_solver_timesteps(T, 4, "leading"), [800, 600, 400, 200])


@pytest.mark.parametrize("num_steps", [0, T + 1])
def test_sampling_timesteps_reject_step_counts_outside_the_schedule(num_steps):
    with pytest.raises(UserError, match=f"sampler steps {num_steps} out of range: use 1..{T} "):
        sampling_timesteps(T, num_steps)


def test_bad_spacing_and_dpm_solver_step_counts_raise_user_errors():
    with pytest.raises(UserError, match="unknown timestep spacing 'uniform'"):
        sampling_timesteps(T, 10, "uniform")
    with pytest.raises(UserError, match=f"use 1..{T - 1} .dpm_solver.. with leading spacing"):
        dpm_solver_timesteps(T, T, "leading")
    assert len(dpm_solver_timesteps(T, T, "trailing")) == T


# --- samplers ---

def oracle_for_point(s, point, prediction):
    """The exact denoiser when all data is the single point `point`."""
    def denoise(x_t, t):
        ab = s.alphas_cumprod[t][:, None, None, None]
        eps = (x_t - jnp.sqrt(ab) * point) / jnp.sqrt(1 - ab)
        return eps if prediction == "epsilon" else jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * point
    return denoise


@pytest.mark.parametrize("sampler, num_steps", [("ddim", 50), ("ddpm", T), ("dpm_solver++", 20)])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_an_oracle_denoiser_for_a_single_point_samples_that_point(sampler, num_steps, prediction):
    s, point = schedule("linear"), jnp.asarray(normal(7, SHAPE[1:]))
    x = diffusion.sample(oracle_for_point(s, point, prediction), s, SHAPE, jax.random.PRNGKey(0),
                         sampler=sampler, num_steps=num_steps, prediction=prediction)
    np.testing.assert_allclose(x, np.broadcast_to(point, SHAPE), atol=1e-3)


def gaussian_oracle_x0(s, mean, std):
    """E[x0 | x_t] for data ~ N(mean, std^2): the exact denoiser, in "sample" form."""
    def denoise(x_t, t):
        ab = s.alphas_cumprod[t][:, None]
        gain = jnp.sqrt(ab) * std ** 2 / (ab * std ** 2 + 1 - ab)
        return mean + gain * (x_t - jnp.sqrt(ab) * mean)
    return denoise


@pytest.mark.parametrize("sampler, num_steps, eta, spacing", [
    ("ddpm", T, 0.0, "leading"), ("ddim", 50, 0.0, "leading"), ("ddim", 200, 1.0, "trailing"),
    ("dpm_solver++", 20, 0.0, "leading"), ("dpm_solver++", 20, 0.0, "trailing")])
def test_samples_of_gaussian_data_have_its_mean_and_spread(sampler, num_steps, eta, spacing):
    s, mean, std = schedule("linear"), 0.3, 0.5
    x = diffusion.sample(gaussian_oracle_x0(s, mean, std), s, (8192, 1), jax.random.PRNGKey(0),
                         sampler=sampler, num_steps=num_steps, eta=eta, prediction="sample",
                         spacing=spacing)
    assert abs(float(np.mean(x)) - mean) < 0.02
    assert abs(float(np.std(x)) - std) < 0.03


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
def test_samplers_are_deterministic_under_a_key_and_jit(sampler):
    s = schedule("linear")
    run = functools.partial(diffusion.sample, lambda x, t: 0.5 * x, s, SHAPE, sampler=sampler,
                            num_steps=5, eta=1.0)
    jitted = jax.jit(run)
    first, again = jitted(jax.random.PRNGKey(0)), jitted(jax.random.PRNGKey(0))
    assert first.shape == SHAPE and first.dtype == jnp.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, jitted(jax.random.PRNGKey(1)))
    np.testing.assert_allclose(run(jax.random.PRNGKey(0)), first, rtol=1e-5, atol=1e-6)


def test_sample_rejects_unknown_samplers():
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        diffusion.sample(lambda x, t: x, schedule("linear"), SHAPE, jax.random.PRNGKey(0),
                         sampler="euler")


def test_ddpm_step_adds_no_noise_at_t_zero_and_draws_it_from_the_key():
    s, output, x_t = schedule("linear"), normal(8), normal(9)
    t = jnp.array([0, 0])
    a = ddpm_step(s, output, t, x_t, jax.random.PRNGKey(0), "epsilon")
    b = ddpm_step(s, output, t, x_t, jax.random.PRNGKey(1), "epsilon")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, predict_x0(s, x_t, t, output, "epsilon"), rtol=1e-6)
    t = jnp.array([5, 5])
    noise = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    np.testing.assert_array_equal(ddpm_step(s, output, t, x_t, jax.random.PRNGKey(0), "epsilon"),
                                  ddpm_step_with_noise(s, output, t, x_t, noise, "epsilon"))


# --- diffusers parity ---

@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip(
        "diffusers",
        reason="diffusers is not installed: pip install diffusers "
               "(CI installs it via the parity extra)")


def torch_array(a):
    import torch
    return torch.from_numpy(np.array(a, np.float32))


def diffusers_kwargs(kind, prediction="epsilon"):
    return dict(num_train_timesteps=T, beta_schedule=DIFFUSERS_BETAS[kind],
                prediction_type=DIFFUSERS_PREDICTION[prediction])


def reference_scheduler(diffusers, name, kind, prediction="epsilon", **kwargs):
    """A diffusers scheduler reading our alphas_cumprod table. diffusers multiplies the table out
    in float32, and near t = 0, where 1 - ab_t ~ 1e-4, its last-bit differences move the posterior
    coefficients by ~1e-4: sharing the table makes the step comparisons exact; the tables
    themselves are compared in test_schedules_equal_the_diffusers_schedules."""
    import torch
    scheduler = getattr(diffusers, name)(**diffusers_kwargs(kind, prediction), **kwargs)
    scheduler.alphas_cumprod = torch.from_numpy(np.array(schedule(kind).alphas_cumprod))
    return scheduler


@pytest.mark.parametrize("kind", KINDS)
def test_schedules_equal_the_diffusers_schedules(diffusers, kind):
    reference = diffusers.DDPMScheduler(**diffusers_kwargs(kind))
    np.testing.assert_allclose(schedule(kind).betas, reference.betas.numpy(), rtol=1e-5, atol=1e-8)
    # diffusers multiplies in float32; the cosine tail (ab ~ 1e-9) differs by ~1e-5 relative.
    np.testing.assert_allclose(schedule(kind).alphas_cumprod, reference.alphas_cumprod.numpy(),
                               rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 3, 7, 50, 61, 999, T])
def test_sampling_timesteps_equal_diffusers_set_timesteps(diffusers, spacing, num_steps):
    for scheduler in (diffusers.DDPMScheduler, diffusers.DDIMScheduler):
        reference = scheduler(num_train_timesteps=T, timestep_spacing=spacing)
        reference.set_timesteps(num_steps)
        # diffusers' "trailing" gives one extra step, t = -1, for some counts such as 61.
        np.testing.assert_array_equal(sampling_timesteps(T, num_steps, spacing),
                                      reference.timesteps.numpy()[:num_steps])


@NUMPY_COPY_WARNING
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 10, 25, 999])
def test_dpm_solver_timesteps_equal_diffusers(diffusers, spacing, num_steps):
    reference = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T,
                                                      timestep_spacing=spacing)
    reference.set_timesteps(num_steps)
    np.testing.assert_array_equal(dpm_solver_timesteps(T, num_steps, spacing),
                                  reference.timesteps.numpy()[:num_steps])


DDPM_CASES = [(kind, prediction, False) for kind in KINDS for prediction in ("epsilon", "v")] + [
    ("linear", "sample", False), ("sqrt_linear", "epsilon", True), ("cosine", "v", True)]


@pytest.mark.parametrize("kind, prediction, clip", DDPM_CASES)
def test_ddpm_step_equals_diffusers(diffusers, kind, prediction, clip):
    import torch
    s = schedule(kind)
    reference = reference_scheduler(diffusers, "DDPMScheduler", kind, prediction, clip_sample=clip,
                                    variance_type="fixed_small")
    for seed, t in enumerate([T - 1, T - 2, 500, 1, 0]):
        output, x_t = normal(10 + seed), normal(20 + seed)
        expected = reference.step(torch_array(output), t, torch_array(x_t),
                                  generator=torch.Generator().manual_seed(seed)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).numpy()
        ours = ddpm_step_with_noise(s, output, jnp.full((2,), t), x_t, noise, prediction,
                                    clip_sample=clip)
        np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("kind, spacing", [("linear", "leading"), ("cosine", "trailing")])
def test_strided_ddpm_step_equals_diffusers(diffusers, kind, spacing):
    import torch
    s = schedule(kind)
    reference = reference_scheduler(diffusers, "DDPMScheduler", kind, clip_sample=False,
                                    timestep_spacing=spacing)
    reference.set_timesteps(20)
    timesteps = sampling_timesteps(T, 20, spacing)
    prev_timesteps = np.append(timesteps[1:], -1)
    for i in (0, 10, 19):
        output, x_t = normal(30 + i), normal(40 + i)
        expected = reference.step(torch_array(output), int(timesteps[i]), torch_array(x_t),
                                  generator=torch.Generator().manual_seed(i)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)).numpy()
        ours = ddpm_step_with_noise(s, output, timesteps[i], x_t, noise, "epsilon",
                                    prev_t=prev_timesteps[i])
        np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"i={i}")


DDIM_CASES = [(kind, prediction, eta, False) for kind in KINDS for prediction in ("epsilon", "v")
              for eta in (0.0, 1.0)] + [("linear", "sample", 0.5, False),
                                        ("sqrt_linear", "v", 1.0, True)]


@pytest.mark.parametrize("kind, prediction, eta, clip", DDIM_CASES)
def test_ddim_step_equals_diffusers(diffusers, kind, prediction, eta, clip):
    s = schedule(kind)
    reference = reference_scheduler(diffusers, "DDIMScheduler", kind, prediction, clip_sample=clip,
                                    set_alpha_to_one=True, steps_offset=0)
    reference.set_timesteps(50)
    for seed, t in enumerate([980, 500, 20, 0]):
        output, x_t, noise = normal(50 + seed), normal(60 + seed), normal(70 + seed)
        expected = reference.step(torch_array(output), t, torch_array(x_t), eta=eta,
                                  variance_noise=torch_array(noise)).prev_sample
        ours = ddim_step(s, output, jnp.full((2,), t), jnp.full((2,), t - T // 50), x_t, eta, noise,
                         prediction, clip_sample=clip)
        np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"t={t}")


@NUMPY_COPY_WARNING
@pytest.mark.parametrize("kind, prediction, spacing", [
    ("linear", "epsilon", "leading"), ("sqrt_linear", "v", "linspace"),
    ("cosine", "epsilon", "trailing")])
def test_dpm_solver_steps_equal_diffusers(diffusers, kind, prediction, spacing):
    """A whole chain with fixed, state-independent outputs: both the first-order start and end and
    the multistep updates in between."""
    s = schedule(kind)
    reference = reference_scheduler(
        diffusers, "DPMSolverMultistepScheduler", kind, prediction, algorithm_type="dpmsolver++",
        solver_order=2, lower_order_final=True, timestep_spacing=spacing)
    reference.set_timesteps(8)
    timesteps = dpm_solver_timesteps(T, 8, spacing)
    np.testing.assert_array_equal(timesteps, reference.timesteps.numpy())
    prev_timesteps = np.append(timesteps[1:], -1)
    theirs, ours, last_x0 = normal(80), normal(80), jnp.zeros(SHAPE)
    for i, t in enumerate(timesteps):
        output = normal(90 + i)
        theirs = reference.step(torch_array(output), int(t), torch_array(theirs)).prev_sample
        theirs = theirs.numpy()
        second_order = 0 < i < len(timesteps) - 1
        ours, last_x0 = dpm_solver_step(s, output, t, prev_timesteps[i], ours, prediction, last_x0,
                                        timesteps[max(i - 1, 0)], second_order)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=f"step {i}")


def smooth_denoiser(x, t, cos):
    """The same deterministic function of (x_t, t) in jax and torch."""
    return 0.9 * x + 0.1 * cos(t / 100.0)


@NUMPY_COPY_WARNING
@pytest.mark.parametrize("sampler, scheduler, kwargs", [
    ("ddim", "DDIMScheduler", dict(set_alpha_to_one=True, steps_offset=0, clip_sample=False)),
    ("dpm_solver++", "DPMSolverMultistepScheduler",
     dict(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)),
])
def test_sample_matches_a_diffusers_sampling_loop(diffusers, sampler, scheduler, kwargs):
    s, x_T = schedule("sqrt_linear"), normal(100)
    reference = reference_scheduler(diffusers, scheduler, "sqrt_linear", timestep_spacing="leading",
                                    **kwargs)
    reference.set_timesteps(10)
    x = torch_array(x_T)
    for t in reference.timesteps:
        x = reference.step(smooth_denoiser(x, int(t), math.cos), t, x).prev_sample
    ours = diffusion.sample(
        lambda x_t, t: smooth_denoiser(x_t, t[:, None, None, None], jnp.cos), s, SHAPE,
        jax.random.PRNGKey(0), sampler=sampler, num_steps=10, initial_noise=jnp.asarray(x_T))
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-5, atol=1e-5)
