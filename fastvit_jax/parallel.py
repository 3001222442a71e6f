"""Data-parallel evaluation: a Mesh over all devices, batch sharded on its leading axis, params replicated.

Multi-host: when the usual coordinator variables are set (JAX_COORDINATOR_ADDRESS, or a cluster
jax.distributed detects itself, e.g. SLURM / TPU pods with FASTVIT_DISTRIBUTED=1),
jax.distributed.initialize() is called and each process feeds its share of the batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_initialized = False


def maybe_initialize_distributed() -> None:
    global _initialized
    if _initialized:
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("FASTVIT_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    _initialized = True


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def round_batch(batch_size: int, mesh: Mesh) -> int:
    """Smallest multiple of the device count >= batch_size (padding is masked out by the caller)."""
    n = mesh.devices.size
    return -(-batch_size // n) * n


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(images: np.ndarray, mesh: Mesh):
    """Global batch -> array sharded over 'data'. With several processes, each passes its local part."""
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(sharding, images)
    return jax.device_put(images, sharding)
