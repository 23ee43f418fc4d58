import pytest

from conftest import SA_CONFIG
from slot_jax.config_loader import apply_override, config_from_args, load_config
from slot_jax.errors import UserError


def test_overrides_parse_to_the_keys_types():
    config = config_from_args(f"{SA_CONFIG}:quick", {
        "train.num_steps": "7", "train.learning_rate": "1e-3", "model.implicit_grad": "true",
        "model.decoder.channels": "(16, 16)", "data.name": "multi_dsprites", "train.grad_clip_norm": "1"})
    assert config.train.num_steps == 7 and config.train.learning_rate == 1e-3
    assert config.model.implicit_grad is True and tuple(config.model.decoder.channels) == (16, 16)
    assert config.data.name == "multi_dsprites" and config.train.grad_clip_norm == 1.0


@pytest.mark.parametrize("key, value, message", [
    ("train.num_step", "5", "unknown config key 'config.train.num_step'"),
    ("nope", "5", "unknown config key 'config.nope'"),
    ("train.num_steps.x", "5", "unknown config key"),
    ("train.num_steps", "five", "expected an integer"),
    ("train.learning_rate", "fast", "expected a number"),
    ("model.implicit_grad", "maybe", "expected true or false"),
    ("model.decoder.channels", "(16, 'a')", "expected a tuple of int"),
    ("model", "3", "is a group"),
])
def test_bad_overrides_are_refused_by_name(key, value, message):
    config = load_config(f"{SA_CONFIG}:quick")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_override(config, key, value)


def test_unknown_variant_and_missing_file_are_one_line_errors():
    with pytest.raises(UserError, match="unknown variant 'huge'"):
        load_config(f"{SA_CONFIG}:huge")
    with pytest.raises(UserError, match="not found"):
        load_config("configs/missing.py")
