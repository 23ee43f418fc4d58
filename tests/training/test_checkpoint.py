"""What a checkpoint insists on matching: the model and the dataset, not how layers are lowered."""
from conftest import SA_CONFIG
from slot_jax.config_loader import config_from_args, load_config
from slot_jax.training.checkpoint import architecture_of


def test_lowering_choices_are_not_architecture():
    base = load_config(f"{SA_CONFIG}:quick")
    lowered = config_from_args(f"{SA_CONFIG}:quick", {"model.conv_impl": "native", "model.decoder.upsample": "transpose",
                                                      "model.compute_dtype": "bfloat16"})
    assert architecture_of(lowered) == architecture_of(base)
    assert "conv_impl" not in architecture_of(base)["model"]
    assert "compute_dtype" not in architecture_of(base)["model"]
    assert "upsample" not in architecture_of(base)["model"]["decoder"]


def test_model_and_dataset_changes_are_architecture():
    base = architecture_of(load_config(f"{SA_CONFIG}:quick"))
    assert architecture_of(config_from_args(f"{SA_CONFIG}:quick", {"model.slot_size": "48"})) != base
    assert architecture_of(config_from_args(f"{SA_CONFIG}:quick", {"data.name": "multi_dsprites"})) != base


def test_the_unets_lowering_is_not_architecture():
    config = SA_CONFIG.parent / "diffusion.py"
    base = architecture_of(load_config(f"{config}:quick"))
    assert architecture_of(config_from_args(f"{config}:quick", {"model.unet.conv_impl": "native"})) == base
    assert architecture_of(config_from_args(f"{config}:quick", {"model.unet.channels": "16"})) != base
