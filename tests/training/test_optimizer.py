import math

import ml_collections
import numpy as np
import pytest

from slot_jax.errors import UserError
from slot_jax.training.optimizer import Plateau, build_schedule, plateau_step


def _train_config(**overrides):
    c = ml_collections.ConfigDict(dict(
        learning_rate=4e-4, schedule="warmup_exp_decay", warmup_steps=10, decay_steps=100, decay_rate=0.5,
        num_steps=1000, min_learning_rate=1e-7))
    c.update(overrides)
    return c


def test_warmup_exp_decay_follows_the_slot_attention_formula():
    schedule = build_schedule(_train_config())
    for step in (0, 5, 10, 50, 300):
        expected = 4e-4 * min(step / 10, 1.0) * 0.5 ** (step / 100)
        assert math.isclose(float(schedule(step)), expected, rel_tol=1e-5, abs_tol=1e-12)


def test_warmup_cosine_peaks_after_warmup_and_ends_at_the_minimum():
    schedule = build_schedule(_train_config(schedule="warmup_cosine"))
    assert float(schedule(0)) == 0.0
    assert math.isclose(float(schedule(10)), 4e-4, rel_tol=1e-5)
    assert math.isclose(float(schedule(1000)), 1e-7, rel_tol=1e-3)


def test_step_decay_is_pytorch_steplr():
    # StepLR(step_size=313, gamma=0.95) as the report's diffusion training: constant within an epoch.
    schedule = build_schedule(_train_config(schedule="step_decay", decay_steps=313, decay_rate=0.95))
    for step in (0, 312, 313, 626, 5000):
        assert math.isclose(float(schedule(step)), 4e-4 * 0.95 ** (step // 313), rel_tol=1e-6)


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(UserError, match="cosinus"):
        build_schedule(_train_config(schedule="cosinus"))


def _torch_like_plateau(values, factor, patience, threshold, min_lr, lr):
    """ReduceLROnPlateau(mode='min', threshold_mode='rel', cooldown=0) written out from its docs."""
    best, bad, lrs = math.inf, 0, []
    for value in values:
        if value < best * (1 - threshold):
            best, bad = value, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = max(lr * factor, min_lr), 0
        lrs.append(lr)
    return lrs


def test_plateau_reduces_after_patience_bad_evaluations_down_to_the_minimum():
    values = [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.8, 0.8, 0.8, 0.8, 0.8] + [0.8] * 20
    plateau, scales = Plateau(math.inf, 0, 1.0), []
    for value in values:
        plateau = plateau_step(plateau, value, factor=0.1, patience=3, threshold=1e-4, min_scale=1e-7 / 1e-4)
        scales.append(plateau.lr_scale * 1e-4)
    expected = _torch_like_plateau(values, 0.1, 3, 1e-4, 1e-7, 1e-4)
    np.testing.assert_allclose(scales, expected, rtol=1e-9)
    # Reductions happen on the 4th bad evaluation in a row, and never below the minimum.
    assert scales[5] == pytest.approx(1e-5) and scales[4] == pytest.approx(1e-4)
    assert min(scales) == pytest.approx(1e-7)


def test_plateau_matches_torch_when_available():
    torch = pytest.importorskip("torch", reason="torch not installed: the parity check against "
                                                "torch.optim.lr_scheduler.ReduceLROnPlateau is skipped")
    rng = np.random.default_rng(0)
    values = list(np.cumsum(rng.normal(0, 1, 60)) + 100)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=3, min_lr=1e-7)
    plateau = Plateau(math.inf, 0, 1.0)
    for value in values:
        sched.step(value)
        plateau = plateau_step(plateau, value, factor=0.1, patience=3, threshold=1e-4, min_scale=1e-3)
        assert plateau.lr_scale * 1e-4 == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
