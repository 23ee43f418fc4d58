"""Slot Attention (Locatello et al. 2020) and the slot initialisers."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from slot_jax.models.layers import MLP


class GaussianSlotInit(nn.Module):
    """Slots drawn i.i.d. from a learned diagonal Gaussian (needs the 'slots' rng)."""

    num_slots: int
    slot_size: int

    @nn.compact
    def __call__(self, batch_size: int) -> jnp.ndarray:
        mu = self.param("mu", nn.initializers.xavier_uniform(), (1, 1, self.slot_size))
        log_sigma = self.param("log_sigma", nn.initializers.xavier_uniform(), (1, 1, self.slot_size))
        noise = jax.random.normal(self.make_rng("slots"), (batch_size, self.num_slots, self.slot_size))
        return mu + jnp.exp(log_sigma) * noise


class LearnedSlotInit(nn.Module):
    """One learned starting vector per slot position (deterministic, not exchangeable)."""

    num_slots: int
    slot_size: int

    @nn.compact
    def __call__(self, batch_size: int) -> jnp.ndarray:
        slots = self.param("slots", nn.initializers.normal(1.0), (self.num_slots, self.slot_size))
        return jnp.broadcast_to(slots, (batch_size, self.num_slots, self.slot_size))


class SlotAttention(nn.Module):
    """Iterative attention in which slots compete (softmax over slots) for the input features.

    `implicit_grad` stops the gradient before the last iteration (Chang et al. 2022), which
    makes training stabler and cheaper in memory.
    Returns the updated slots [B, K, D] and the last iteration's attention [B, K, N]
    (softmax over slots, before the per-slot renormalisation).
    """

    num_iterations: int = 3
    slot_size: int = 64
    mlp_hidden: int = 128
    epsilon: float = 1e-8
    implicit_grad: bool = False

    @nn.compact
    def __call__(self, slots: jnp.ndarray, inputs: jnp.ndarray):
        inputs = nn.LayerNorm(name="norm_inputs")(inputs)
        keys = nn.Dense(self.slot_size, use_bias=False, name="keys")(inputs)
        values = nn.Dense(self.slot_size, use_bias=False, name="values")(inputs)
        keys = keys * self.slot_size**-0.5

        norm_slots = nn.LayerNorm(name="norm_slots")
        project_q = nn.Dense(self.slot_size, use_bias=False, name="queries")
        gru = nn.GRUCell(self.slot_size, name="gru")
        norm_mlp = nn.LayerNorm(name="norm_mlp")
        mlp = MLP((self.mlp_hidden, self.slot_size), name="mlp")

        attention = None
        for iteration in range(self.num_iterations):
            if self.implicit_grad and iteration == self.num_iterations - 1:
                slots = jax.lax.stop_gradient(slots)
            queries = project_q(norm_slots(slots))
            logits = jnp.einsum("bnd,bkd->bkn", keys, queries)
            attention = jax.nn.softmax(logits, axis=1)
            weights = attention + self.epsilon
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
            updates = jnp.einsum("bkn,bnd->bkd", weights, values)
            slots, _ = gru(slots, updates)
            slots = slots + mlp(norm_mlp(slots))
        return slots, attention
