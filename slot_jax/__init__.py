"""slot_jax: object-centric learning with Slot Attention in JAX/Flax."""

__version__ = "0.1.0"
