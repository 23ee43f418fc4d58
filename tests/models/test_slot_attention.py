import jax
import jax.numpy as jnp
import numpy as np

from slot_jax.models.slot_attention import GaussianSlotInit, LearnedSlotInit, SlotAttention


def _run(module, slots, inputs, params=None):
    if params is None:
        params = module.init(jax.random.PRNGKey(0), slots, inputs)
    return params, module.apply(params, slots, inputs)


def test_slot_attention_is_equivariant_to_slot_permutations():
    rng = np.random.default_rng(0)
    slots = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    inputs = jnp.asarray(rng.normal(size=(2, 30, 8)), jnp.float32)
    module = SlotAttention(num_iterations=3, slot_size=16, mlp_hidden=32)
    params, (out, attn) = _run(module, slots, inputs)
    perm = np.array([3, 0, 4, 1, 2])
    _, (out_p, attn_p) = _run(module, slots[:, perm], inputs, params)
    np.testing.assert_allclose(out_p, out[:, perm], atol=1e-5)
    np.testing.assert_allclose(attn_p, attn[:, perm], atol=1e-6)
    # ...and the result does depend on the slots: a different start gives different slots.
    _, (other, _) = _run(module, slots + 1.0, inputs, params)
    assert np.abs(np.asarray(other - out)).max() > 1e-3


def test_attention_is_a_softmax_over_slots():
    rng = np.random.default_rng(1)
    slots = jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32)
    inputs = jnp.asarray(rng.normal(size=(3, 12, 6)), jnp.float32)
    _, (out, attn) = _run(SlotAttention(num_iterations=2, slot_size=8, mlp_hidden=16), slots, inputs)
    assert out.shape == (3, 4, 8) and attn.shape == (3, 4, 12)
    np.testing.assert_allclose(np.asarray(attn).sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.asarray(attn) >= 0)


def test_implicit_grad_keeps_the_forward_pass_and_cuts_the_gradient():
    rng = np.random.default_rng(2)
    slots = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    inputs = jnp.asarray(rng.normal(size=(2, 10, 4)), jnp.float32)
    plain = SlotAttention(num_iterations=3, slot_size=8, mlp_hidden=16)
    implicit = SlotAttention(num_iterations=3, slot_size=8, mlp_hidden=16, implicit_grad=True)
    params = plain.init(jax.random.PRNGKey(0), slots, inputs)
    np.testing.assert_allclose(plain.apply(params, slots, inputs)[0], implicit.apply(params, slots, inputs)[0],
                               atol=1e-6)
    grad_of_start = lambda module: jax.grad(lambda s: module.apply(params, s, inputs)[0].sum())(slots)
    assert np.abs(np.asarray(grad_of_start(plain))).max() > 0
    np.testing.assert_array_equal(grad_of_start(implicit), 0.0)


def test_gaussian_init_samples_from_the_slots_rng_and_learned_init_is_fixed():
    gaussian = GaussianSlotInit(num_slots=4, slot_size=6)
    params = gaussian.init({"params": jax.random.PRNGKey(0), "slots": jax.random.PRNGKey(1)}, 2)
    a = gaussian.apply(params, 2, rngs={"slots": jax.random.PRNGKey(5)})
    b = gaussian.apply(params, 2, rngs={"slots": jax.random.PRNGKey(6)})
    assert a.shape == (2, 4, 6) and np.abs(np.asarray(a - b)).max() > 1e-3
    learned = LearnedSlotInit(num_slots=4, slot_size=6)
    lp = learned.init(jax.random.PRNGKey(0), 2)
    out = learned.apply(lp, 2)
    np.testing.assert_array_equal(out[0], out[1])
    assert np.abs(np.asarray(out[0, 0] - out[0, 1])).max() > 0
