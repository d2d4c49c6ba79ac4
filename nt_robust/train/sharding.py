"""Data parallelism over every device of every host with ``jax.jit`` + ``NamedSharding``.

The batch is sharded along a 'data' mesh axis; the training state is replicated, so XLA
inserts the gradient all-reduce, and BatchNorm statistics (a mean over the batch axis of a
sharded array) are taken over the *global* batch. Each process feeds only its own rows::

    mesh = data_mesh()
    images = global_batch(local_images, mesh)        # process-local rows -> global array

Multi-host: call :func:`initialize_distributed` before anything touches a device.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, cpu_collectives: str | None = None) -> None:
    """Join a multi-process job. With no arguments JAX auto-detects the cluster (TPU pods,
    SLURM, Open MPI, ...). On CPU, ``cpu_collectives="gloo"`` enables cross-process
    collectives (what the two-process test uses)."""
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)


def initialize_distributed_from_env() -> bool:
    """Initialize from ``NT_ROBUST_COORDINATOR`` / ``NT_ROBUST_NUM_PROCESSES`` /
    ``NT_ROBUST_PROCESS_ID`` (and ``NT_ROBUST_CPU_COLLECTIVES``) when set; True if it did."""
    coordinator = os.environ.get("NT_ROBUST_COORDINATOR")
    if not coordinator:
        return False
    initialize_distributed(coordinator, int(os.environ["NT_ROBUST_NUM_PROCESSES"]),
                           int(os.environ["NT_ROBUST_PROCESS_ID"]),
                           os.environ.get("NT_ROBUST_CPU_COLLECTIVES"))
    return True


def data_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, in process order."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(global_batch_size: int, field: str) -> None:
    """A clear error when a global batch cannot be split evenly over devices and hosts."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size % devices:
        raise ValueError(f"{field} = {global_batch_size} does not divide over {devices} devices "
                         f"({processes} process(es)): use a multiple of {devices}")


def process_rows(global_batch_size: int) -> slice:
    """The rows of a global batch that this process feeds."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble a batch-sharded global array from this process's rows."""
    sharding = batch_sharding(mesh)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree of host values on every device (identical on every process)."""
    sharding = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)


def to_host(tree: Any) -> Any:
    """Fetch (possibly multi-host sharded) arrays to numpy on every process."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
