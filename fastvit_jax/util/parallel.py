"""Data-parallel evaluation: a Mesh over all devices, batch sharded on its leading axis, params replicated.

Multi-host: when the usual coordinator variables are set (JAX_COORDINATOR_ADDRESS, or a cluster
jax.distributed detects itself, e.g. SLURM / TPU pods with FASTVIT_DISTRIBUTED=1),
jax.distributed.initialize() is called. Each process then decodes only its share of every global
batch (`process_chunks`), feeds it to the sharded forward, and the outputs are gathered
(`gather_batch`) so every process computes the same metrics over the whole batch.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fastvit_jax.util import supervise

_initialized = False
_distributed = False  # this process joined a multi-process run


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when one is described in the environment: JAX_COORDINATOR_ADDRESS
    (host:port of process 0) with JAX_NUM_PROCESSES and JAX_PROCESS_ID for a manual launch, or
    FASTVIT_DISTRIBUTED=1 on a cluster jax detects itself (SLURM, TPU pods, ...)."""
    global _initialized, _distributed
    if _initialized:
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address or os.environ.get("FASTVIT_DISTRIBUTED") == "1":
        kw = {}
        if "JAX_NUM_PROCESSES" in os.environ:
            kw = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                  "process_id": int(os.environ.get("JAX_PROCESS_ID", "0"))}
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
        jax.distributed.initialize(address, heartbeat_timeout_seconds=supervise.heartbeat_s(), **kw)
        _distributed = True
        _keep_stdout_for_results()
    _initialized = True


def lost_peer(error: BaseException) -> bool:
    """A collective or the coordination service failed because another process of the run is gone."""
    text = str(error)  # jax raises JaxRuntimeError, process_allgather a ValueError, with the same text
    return _distributed and any(s in text for s in ("Gloo", "Connection closed by peer", "Connection reset by peer",
                                                    "UNAVAILABLE", "heartbeat", "DEADLINE_EXCEEDED"))


def exit_lost_peer(error: BaseException) -> None:
    """One line, then leave at once: a normal exit would wait at jax.distributed's shutdown barrier
    for the dead process and then abort with a C++ stack trace."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    print(f"fastvit: error: process {jax.process_index()} of {jax.process_count()}: another process of this run "
          f"is gone ({first}); rerun every process", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _keep_stdout_for_results() -> None:
    """The collectives library writes connection notes to file descriptor 1, which would break --json
    output: from here on fd 1 goes to stderr, and Python's sys.stdout keeps the real stdout."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(real, "w", buffering=1)


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


def process_chunks(items: list, batch_size: int) -> tuple[list[list], int]:
    """This process's share of every global batch of `batch_size` items, and the per-process batch size.
    Every process gets the same number of chunks (some may be short or empty), so collectives line up."""
    procs, me = jax.process_count(), jax.process_index()
    local = batch_size // procs
    return [items[k + me * local:k + (me + 1) * local] for k in range(0, len(items), batch_size)], local


def gather_batch(logits, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the whole global batch on every process, padding rows dropped.
    logits: the forward's global array; labels, count: this process's part and its real rows."""
    from jax.experimental import multihost_utils

    full = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    all_labels = np.asarray(multihost_utils.process_allgather(labels, tiled=True))
    counts = np.asarray(multihost_utils.process_allgather(np.array([count]), tiled=True))
    local = len(labels)
    keep = np.concatenate([np.arange(p * local, p * local + c) for p, c in enumerate(counts)]).astype(int)
    return full[keep], all_labels[keep]
