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


COORDINATOR_TIMEOUT_ENV = "NT_ROBUST_COORDINATOR_TIMEOUT"
DEFAULT_COORDINATOR_TIMEOUT = 120


class DistributedSetupError(RuntimeError):
    """The multi-process job could not be joined (unreachable coordinator, bad settings)."""


def coordinator_timeout() -> int:
    """Seconds to wait for every process to join: ``$NT_ROBUST_COORDINATOR_TIMEOUT``, else 120."""
    text = os.environ.get(COORDINATOR_TIMEOUT_ENV, "").strip()
    try:
        seconds = int(text) if text else DEFAULT_COORDINATOR_TIMEOUT
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise DistributedSetupError(f"{COORDINATOR_TIMEOUT_ENV} must be a whole number of seconds >= 1, got {text!r}")
    return seconds


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, cpu_collectives: str | None = None) -> None:
    """Join a multi-process job. With no arguments JAX auto-detects the cluster (TPU pods,
    SLURM, Open MPI, ...). On CPU, ``cpu_collectives="gloo"`` enables cross-process
    collectives (what the two-process test uses). A coordinator that does not answer within
    :func:`coordinator_timeout` seconds is a :class:`DistributedSetupError` naming it, not a hang."""
    import logging

    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {k: v for k, v in dict(coordinator_address=coordinator, num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
    timeout = coordinator_timeout()
    where = coordinator or "the auto-detected coordinator"
    which = "auto-detected" if process_id is None else f"{process_id} of {num_processes}"
    logging.getLogger("nt_robust.train").info("joining the job at %s (process %s; waiting up to %d s)",
                                              where, which, timeout)
    if coordinator and process_id:  # XLA aborts the process (SIGABRT) when its own wait runs out
        _wait_for_coordinator(coordinator, timeout)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout)
    except ValueError as error:
        if coordinator or "coordinator_address" not in str(error):
            raise DistributedSetupError(f"could not join the multi-process job at {where}: {error}") from None
        raise DistributedSetupError(
            "--distributed found no cluster to join: JAX detects one only inside a Slurm job step (srun), an "
            "Open MPI launch, a Cloud TPU pod slice or a GKE TPU pod. Run the command there (for a study: the jobs "
            "`nt-robust study SPEC --emit slurm --nodes N` or `--emit tpu-vm` write), give the cluster "
            "explicitly (--coordinator HOST:PORT --num-processes N --process-id I), or drop --distributed to "
            "train in one process") from None
    except Exception as error:  # noqa: BLE001 - XLA raises bare RuntimeErrors/XlaRuntimeErrors here
        raise DistributedSetupError(
            f"could not join the multi-process job at {where} within {timeout} s ({type(error).__name__}: "
            f"{str(error)[:300]}). Check that process 0 runs and that host:port is reachable from here (firewall, "
            f"hostname), and that every process got the same --num-processes; {COORDINATOR_TIMEOUT_ENV} sets the "
            "wait") from None


def _wait_for_coordinator(coordinator: str, timeout: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; DistributedSetupError after ``timeout`` s."""
    import socket
    import time

    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedSetupError(f"the coordinator must be HOST:PORT (e.g. node0:12345), got {coordinator!r}")
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout)):
                return
        except OSError as error:
            last = error
            time.sleep(0.5)
    raise DistributedSetupError(
        f"the coordinator {coordinator} did not answer within {timeout:g} s ({last}). Check that process 0 runs "
        f"there and that the port is reachable from this host (firewall, hostname); {COORDINATOR_TIMEOUT_ENV} "
        "sets the wait")


def initialize_distributed_from_env() -> bool:
    """Initialize from ``NT_ROBUST_COORDINATOR`` / ``NT_ROBUST_NUM_PROCESSES`` /
    ``NT_ROBUST_PROCESS_ID`` (and ``NT_ROBUST_CPU_COLLECTIVES``) when set; True if it did."""
    coordinator = os.environ.get("NT_ROBUST_COORDINATOR")
    if not coordinator:
        return False
    numbers = {}
    for name in ("NT_ROBUST_NUM_PROCESSES", "NT_ROBUST_PROCESS_ID"):
        text = os.environ.get(name, "").strip()
        if not text.isdigit():
            raise DistributedSetupError(
                f"NT_ROBUST_COORDINATOR={coordinator} is set, so {name} must be too, a whole number "
                f"(got {text!r}): set NT_ROBUST_NUM_PROCESSES (the job's process count) and NT_ROBUST_PROCESS_ID "
                "(this process's index from 0), or unset NT_ROBUST_COORDINATOR for one process")
        numbers[name] = int(text)
    if numbers["NT_ROBUST_PROCESS_ID"] >= numbers["NT_ROBUST_NUM_PROCESSES"]:
        raise DistributedSetupError(f"NT_ROBUST_PROCESS_ID={numbers['NT_ROBUST_PROCESS_ID']} must be below "
                                    f"NT_ROBUST_NUM_PROCESSES={numbers['NT_ROBUST_NUM_PROCESSES']}")
    initialize_distributed(coordinator, numbers["NT_ROBUST_NUM_PROCESSES"], numbers["NT_ROBUST_PROCESS_ID"],
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
