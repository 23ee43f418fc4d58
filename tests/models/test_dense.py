"""Mixed-precision dense layers: bfloat16 operands, float32 products, float32 gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slot_jax.models import dense
from slot_jax.models.dense import mixed_contract, mixed_dot_general


def _rounded(a):
    """float64 copy of `a` rounded to bfloat16: the operands the bf16 matmul really multiplies."""
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("x_shape,kernel_shape,n", [((3, 5, 7), (7, 4), 1),  # Dense on tokens
                                                    ((2, 6, 8), (8, 2, 3), 1),  # q/k/v projection to heads
                                                    ((2, 6, 2, 3), (2, 3, 8), 2)])  # heads back to features
def test_mixed_contract_multiplies_rounded_operands_and_differentiates_in_float32(x_shape, kernel_shape, n):
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, kernel_shape)
    out, vjp = jax.vjp(lambda x, k: mixed_contract(x, k, n, jnp.dtype(jnp.bfloat16)), x, kernel)
    grad = jax.random.normal(kg, out.shape)
    grad_x, grad_kernel = vjp(grad)
    assert out.dtype == grad_x.dtype == grad_kernel.dtype == jnp.float32

    lead, inner = len(x_shape) - n, "abcd"[:n]
    batch, outer = "ijkl"[:lead], "wxyz"[:len(kernel_shape) - n]
    rx, rk, rg = _rounded(x), _rounded(kernel), _rounded(grad)  # the incoming gradient is rounded too
    want = np.einsum(f"{batch}{inner},{inner}{outer}->{batch}{outer}", rx, rk)
    want_x = np.einsum(f"{batch}{outer},{inner}{outer}->{batch}{inner}", rg, rk)
    want_kernel = np.einsum(f"{batch}{inner},{batch}{outer}->{inner}{outer}", rx, rg)
    # float32 accumulation of exact bf16 products: float32 rounding only.
    for got, exact in ((out, want), (grad_x, want_x), (grad_kernel, want_kernel)):
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    # And far from the float32 product it replaces only by bf16's rounding (2^-8 relative).
    full = np.einsum(f"{batch}{inner},{inner}{outer}->{batch}{outer}", np.asarray(x), np.asarray(kernel))
    assert 0 < np.abs(np.asarray(out) - full).max() < 0.05 * np.abs(full).max()


def test_float32_keeps_flax_own_dot_general(monkeypatch):
    assert mixed_dot_general(jnp.float32) is None
    assert mixed_dot_general(jnp.bfloat16) is not None
    monkeypatch.setattr(dense, "LOW_PRECISION_DENSE", False)
    assert mixed_dot_general(jnp.bfloat16) is None


def test_flax_layers_with_it_take_bf16_operands_and_keep_float32_outputs():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    layer = nn.DenseGeneral((2, 3), dot_general=mixed_dot_general(jnp.bfloat16))
    params = layer.init(jax.random.PRNGKey(1), x)
    out = layer.apply(params, x)
    exact = np.einsum("bti,ihd->bthd", _rounded(x), _rounded(params["params"]["kernel"]))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)
    loss = lambda p, x: jnp.sum(layer.apply(p, x) ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 3  # forward, input gradient, kernel gradient
    assert all("bf16>, tensor<" in line and line.rstrip().endswith("xf32>") for line in dots), dots


def test_a_contraction_it_cannot_do_is_an_error():
    dot_general = mixed_dot_general(jnp.bfloat16)
    x, kernel = jnp.ones((4, 3)), jnp.ones((4, 5))
    with pytest.raises(ValueError, match="contracts the last dims"):
        dot_general(x, kernel, (((0,), (0,)), ((), ())))
