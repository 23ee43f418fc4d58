"""Device mesh and shardings for data parallelism with jax.jit (no pmap).

Parameters and optimizer state are replicated; batches are split along the leading axis over
the mesh's 'data' axis. Under jit, XLA inserts the gradient all-reduce that pmap's `pmean` did.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's slice of the batch into global arrays sharded over the mesh."""
    sharding = data_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}
