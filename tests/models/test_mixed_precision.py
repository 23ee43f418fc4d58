"""bfloat16 compute (model.compute_dtype): the convolutions run in bf16, everything the user
sees (parameters, gradients, masks, recon, loss) stays float32 and close to the float32 model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SA_CONFIG, TINY_OVERRIDES, needs_onednn_bf16
from slot_jax import onednn
from slot_jax.config_loader import config_from_args
from slot_jax.models.autoencoder import build_autoencoder, reconstruction_loss


def _model(dtype, **overrides):
    config = config_from_args(f"{SA_CONFIG}:quick", {**TINY_OVERRIDES, **overrides, "model.compute_dtype": dtype})
    return build_autoencoder(config.model)


def _loss_and_grads(model, params, image):
    def loss(p):
        return jnp.mean(reconstruction_loss(model.apply({"params": p}, image, rngs={"slots": jax.random.PRNGKey(2)}), image))
    return jax.value_and_grad(loss)(params)


def _conv_dtypes(model, params, image):
    """The operand dtypes of every convolution in the traced forward pass, nested calls included."""
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, image, rngs={"slots": jax.random.PRNGKey(2)}))(params)
    found = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.add(str(eqn.invars[0].aval.dtype))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                    if hasattr(inner, "eqns"):
                        visit(inner)
    visit(jaxpr.jaxpr)
    return found


@pytest.mark.parametrize("upsample", ["subpixel", "transpose"])
def test_bfloat16_runs_the_convolutions_in_bf16_and_keeps_outputs_float32(upsample):
    image = jax.random.uniform(jax.random.PRNGKey(0), (2, 35, 35, 3))
    f32, bf16 = _model("float32", **{"model.decoder.upsample": upsample}), _model("bfloat16", **{"model.decoder.upsample": upsample})
    params = f32.init({"params": jax.random.PRNGKey(1), "slots": jax.random.PRNGKey(2)}, image)["params"]
    assert _conv_dtypes(f32, params, image) == {"float32"}
    assert _conv_dtypes(bf16, params, image) == {"bfloat16"}
    out32 = f32.apply({"params": params}, image, rngs={"slots": jax.random.PRNGKey(2)})
    out16 = bf16.apply({"params": params}, image, rngs={"slots": jax.random.PRNGKey(2)})
    for name in ("recon", "masks", "slot_images", "slots", "attn"):
        assert out16[name].dtype == jnp.float32, name
    np.testing.assert_allclose(out16["masks"].sum(axis=1), 1.0, atol=1e-5)
    # bf16 keeps 8 bits of mantissa: ~0.4% relative error per layer, a few layers deep.
    scale = float(jnp.max(jnp.abs(out32["recon"])))
    assert float(jnp.max(jnp.abs(out16["recon"] - out32["recon"]))) < 0.05 * scale
    assert float(jnp.max(jnp.abs(out16["recon"] - out32["recon"]))) > 0  # it did compute in bf16


def test_bfloat16_gradients_are_float32_and_point_the_same_way():
    image = jax.random.uniform(jax.random.PRNGKey(0), (4, 35, 35, 3))
    f32, bf16 = _model("float32"), _model("bfloat16")
    params = f32.init({"params": jax.random.PRNGKey(1), "slots": jax.random.PRNGKey(2)}, image)["params"]
    loss32, grads32 = _loss_and_grads(f32, params, image)
    loss16, grads16 = _loss_and_grads(bf16, params, image)
    assert loss16.dtype == jnp.float32 and abs(float(loss16 - loss32)) < 0.02 * float(loss32)
    leaves32, leaves16 = jax.tree.leaves(grads32), jax.tree.leaves(grads16)
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves16)
    flat32 = jnp.concatenate([g.ravel() for g in leaves32])
    flat16 = jnp.concatenate([g.ravel() for g in leaves16])
    cosine = float(flat32 @ flat16 / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16)))
    assert cosine > 0.99, cosine


@needs_onednn_bf16
def test_bfloat16_on_onednn_runs_every_convolution_there_and_trains_like_float32():
    image = jax.random.uniform(jax.random.PRNGKey(0), (4, 35, 35, 3))
    on_onednn = {"model.conv_impl": "onednn", "model.decoder.upsample": "auto"}
    f32, bf16 = _model("float32", **on_onednn), _model("bfloat16", **on_onednn)
    params = f32.init({"params": jax.random.PRNGKey(1), "slots": jax.random.PRNGKey(2)}, image)["params"]
    loss32, grads32 = _loss_and_grads(f32, params, image)
    loss16, grads16 = _loss_and_grads(bf16, params, image)
    assert abs(float(loss16 - loss32)) < 0.02 * float(loss32)
    flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads32)])
    flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads16)])
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert float(flat32 @ flat16 / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))) > 0.99
    # Forward, input and weight gradients: oneDNN calls on bf16 operands, no XLA convolution left.
    hlo = jax.jit(lambda p: _loss_and_grads(bf16, p, image)).lower(params).as_text()
    calls = [line for line in hlo.splitlines() if onednn.TARGET in line and "stablehlo.custom_call" in line]
    assert len(calls) > 10 and all("bf16" in line for line in calls)
    assert "stablehlo.convolution" not in hlo
