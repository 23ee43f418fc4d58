"""The decoder's mask softmax and mixture over the slot axis (axis 1), as sums of its K slices.

Slots sit on axis 1 ([B, K, ...]), so a reduction over them reads K values that lie a whole
image or feature map apart. XLA:CPU runs such strided reductions over a short axis far below
memory speed, and autodiff's backward of a sum over slices (pads and adds) is no better. Here
both passes add whole slices, elementwise work that XLA fuses into single loops. (Slot
Attention's softmax over slots, on [B, K, N] logits, ran slower this way alone and no faster in
whole steps, so it stays jax.nn.softmax: benchmarks/slot_reductions.py.)
"""
import functools

import jax
import jax.numpy as jnp


def _per_slot(t: jnp.ndarray) -> list:
    return [t[:, k] for k in range(t.shape[1])]


def _total(terms: list) -> jnp.ndarray:
    return functools.reduce(jnp.add, terms)


def _mix(x):
    logits, images = _per_slot(x[..., 3:]), _per_slot(x[..., :3])
    peak = functools.reduce(jnp.maximum, logits)
    weights = [jnp.exp(logit - peak) for logit in logits]
    inverse_total = 1.0 / _total(weights)
    masks = [w * inverse_total for w in weights]
    return _total([m * image for m, image in zip(masks, images)]), masks


@jax.custom_vjp
def mix_slots(x: jnp.ndarray) -> tuple:
    """x [B, K, H, W, 4] (RGB and a mask logit per slot) -> (recon [B, H, W, 3], masks
    [B, K, H, W, 1]), masks a softmax over the K slots.

    As jax.nn.softmax and a sum over axis 1, with reductions over the slots as sums of whole
    slices in both passes: the forward pass took 2.5 ms against 25 ms, forward and backward 10
    against 28 ms (32 images, 7 slots, 64x64)."""
    recon, masks = _mix(x)
    return recon, jnp.stack(masks, axis=1)


def _mix_slots_forward(x):
    recon, masks = mix_slots(x)
    return (recon, masks), (x, masks)


def _mix_slots_backward(residuals, cotangents):
    x, masks = residuals
    d_recon, d_masks = cotangents
    masks = _per_slot(masks)
    # cotangent of each slot's mask, through the mixture and directly
    d_mask = [jnp.sum(d_recon * image, axis=-1, keepdims=True) + d
              for image, d in zip(_per_slot(x[..., :3]), _per_slot(d_masks))]
    expected = _total([m * d for m, d in zip(masks, d_mask)])
    d_logits = [m * (d - expected) for m, d in zip(masks, d_mask)]  # the softmax's Jacobian
    d_x = [jnp.concatenate([m * d_recon, d], axis=-1) for m, d in zip(masks, d_logits)]
    return (jnp.stack(d_x, axis=1),)


mix_slots.defvjp(_mix_slots_forward, _mix_slots_backward)
