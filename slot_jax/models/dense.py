"""Dense layers whose matmuls run in a low-precision compute dtype (bfloat16) with float32 results.

flax's `Dense(dtype=bfloat16)` would round the layer's output and its gradients to bfloat16, and
XLA:CPU runs a bfloat16 dot that writes bfloat16 no faster than a float32 one. A bfloat16 dot
that writes float32 uses the CPU's bf16 dot-product instructions (AVX512_BF16): about twice the
float32 speed on our 2-core AMD EPYC. So `mixed_dot_general(dtype)` rounds the operands to
`dtype` and keeps everything else in float32: the product, the bias, the output, and in the
backward pass the input and weight gradients (the incoming gradient is rounded to `dtype` too, as
the bfloat16 convolutions do). Parameters stay float32.
"""
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

# Whether the UNet's dense layers follow model.compute_dtype (read at trace time; benchmarks turn
# it off to time the same bfloat16 step with float32 dense layers).
LOW_PRECISION_DENSE = True


def _contract(a, b, lhs_dims, rhs_dims):
    return lax.dot_general(a, b, ((lhs_dims, rhs_dims), ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def mixed_contract(x, kernel, num_contracted: int, dtype):
    """x [..., *in] times kernel [*in, *out] over the `num_contracted` dims `in`, operands rounded
    to `dtype`, the result float32."""
    return _mixed_forward(x, kernel, num_contracted, dtype)[0]


def _mixed_forward(x, kernel, num_contracted, dtype):
    low_x, low_kernel = x.astype(dtype), kernel.astype(dtype)
    n = num_contracted
    out = _contract(low_x, low_kernel, tuple(range(x.ndim - n, x.ndim)), tuple(range(n)))
    return out, (low_x, low_kernel)  # the rounded operands: half the memory of float32 ones


def _mixed_backward(num_contracted, dtype, residuals, grad):
    low_x, low_kernel = residuals
    low_grad = grad.astype(dtype)
    n, num_out = num_contracted, low_kernel.ndim - num_contracted
    lead = low_x.ndim - n
    grad_x = _contract(low_grad, low_kernel, tuple(range(lead, lead + num_out)), tuple(range(n, low_kernel.ndim)))
    grad_kernel = _contract(low_x, low_grad, tuple(range(lead)), tuple(range(lead)))
    return grad_x, grad_kernel


mixed_contract.defvjp(_mixed_forward, _mixed_backward)


def mixed_dot_general(dtype: Any) -> Optional[Callable]:
    """A `dot_general` for flax's Dense, DenseGeneral and attention projections that computes in
    `dtype` with float32 results; None (flax's own, unchanged) for float32 or when
    LOW_PRECISION_DENSE is off."""
    if jnp.dtype(dtype) == jnp.float32 or not LOW_PRECISION_DENSE:
        return None

    def dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
        (x_dims, kernel_dims), batch_dims = dimension_numbers
        n = len(x_dims)
        if (any(batch_dims) or tuple(x_dims) != tuple(range(x.ndim - n, x.ndim))
                or tuple(kernel_dims) != tuple(range(n))):
            raise ValueError(f"mixed_dot_general contracts the last dims of the input with the first of the "
                             f"kernel, not {dimension_numbers}")
        return mixed_contract(x, kernel, n, jnp.dtype(dtype))

    return dot_general
