"""slot_jax: object-centric learning with Slot Attention in JAX/Flax."""
from slot_jax import xla_cpu

__version__ = "0.1.0"

# Before any JAX computation starts the CPU backend (see slot_jax/xla_cpu.py for why and how to opt out).
xla_cpu.prefer_eigen_convolutions()
