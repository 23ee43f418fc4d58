"""The PyTorch twin of SlotUNet (benchmarks/torch_unet_twin.py) computes the same function as the
Flax module once the Flax parameters are copied in, so benchmarks/diffusion_speed.py compares
the two frameworks on equal work."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.config_loader import config_from_args
from slot_jax.models.unet import SlotUNet, build_unet

torch = pytest.importorskip("torch", reason="torch not installed: the twin under test is a PyTorch module "
                                            "(pip install .[parity])")

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import torch_unet_twin  # noqa: E402

# Attention at both levels and in the middle, a slot size unlike any width, two heads.
TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1), num_heads=2,
            num_groups=4)


def _random_leaf(rng):
    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":  # LeCun-normal scale; attention q/k/v kernels are [in, heads, head_dim]
            fan_in = shape[0] if len(shape) == 3 and path[-2].key != "out" else np.prod(shape[:-1])
            value = rng.normal(size=shape) / np.sqrt(fan_in)
        else:
            value = (name == "scale") + 0.2 * rng.normal(size=shape)
        return jnp.asarray(value, jnp.float32)
    return fill


def test_twin_matches_flax_with_copied_params():
    batch, size, latent_channels, num_slots, slot_size = 2, 8, 3, 3, 5
    model = SlotUNet(**TINY)
    rng = np.random.default_rng(0)
    x_t = rng.normal(size=(batch, size, size, latent_channels)).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.int32)
    slots = rng.normal(size=(batch, num_slots, slot_size)).astype(np.float32)
    # Random values for every parameter, the zero-initialised output layers too, so the output is
    # non-trivial (and no init to compile).
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x_t, t, slots)["params"]
    params = jax.tree_util.tree_map_with_path(_random_leaf(rng), shapes)
    expected = np.asarray(jax.jit(model.apply)({"params": params}, x_t, t, slots))

    twin = torch_unet_twin.TorchSlotUNet(latent_channels, slot_size, **TINY)
    torch_unet_twin.load_flax_params(twin, params)
    with torch.no_grad():
        got = twin(torch.from_numpy(x_t).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(slots))
    got = got.permute(0, 2, 3, 1).numpy()

    assert got.shape == expected.shape == (batch, size, size, latent_channels)
    assert np.std(expected) > 0.1  # a meaningful comparison, not zeros against zeros
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_twin_of_the_quick_config_has_the_flax_parameter_shapes():
    config = config_from_args(f"{REPO / 'configs' / 'diffusion.py'}:quick", {})
    m = config.model
    model = build_unet(m.unet)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                            jnp.zeros((1,), jnp.int32), jnp.zeros((1, m.num_slots, m.slot_size)))["params"]
    twin = torch_unet_twin.from_config(m.unet, 3, m.slot_size)
    flax_sizes = sorted(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))
    torch_sizes = sorted(p.numel() for p in twin.parameters())
    assert flax_sizes == torch_sizes
