"""Device parallelism: the one module that names a Mesh, a mesh axis or a multi-host call.

Data parallelism only: the batch is split over a 1-D mesh with axis 'data' spanning every
device, parameters and optimiser state are replicated. Under `jax.jit` with these shardings a
plain mean over the batch is already the global mean, so no collective is written by hand.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# On CPU, XLA runs convolutions on one thread; splitting the batch over several host
# "devices" uses the other cores (ENV-NOTES: 1.6-1.9x on 2 cores).
CPU_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices) with the single axis 'data'.

    Built with `Mesh(...)` rather than `jax.make_mesh`, whose axes default to Explicit in this
    JAX version and then reject unsharded inputs.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(batch_size: int, num_devices: int, what: str = "batch size") -> None:
    """Raise ValueError unless `batch_size` splits evenly over `num_devices`."""
    if batch_size <= 0 or batch_size % num_devices:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the device count {num_devices}; "
            f"use a multiple of {num_devices}"
        )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Global arrays sharded on 'data' from this host's piece of every leaf of `batch`.

    Args:
      batch: a pytree of numpy arrays [B_local, ...]; B_local = B_global / process_count.
      mesh: the data mesh.
    Returns:
      the same pytree of `jax.Array`s of shape [B_global, ...] sharded over 'data'.
    """
    sharding = data_sharding(mesh)
    n_local = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x)
        check_batch_divisible(x.shape[0], n_local, "per-host batch size")
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of `tree` on all devices of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def initialize_distributed(**kwargs) -> None:
    """`jax.distributed.initialize(**kwargs)` for multi-host runs; call before any other JAX use.

    On a single host there is nothing to do; the call is kept here so that every multi-host
    concern lives in this module.
    """
    jax.distributed.initialize(**kwargs)


def set_cpu_device_count(count: int | None = None) -> bool:
    """Ask XLA for `count` host devices (default: the number of CPU cores) via XLA_FLAGS.

    Only effective before JAX initialises its backends, so launch programs call this before
    importing anything that touches devices. Does nothing when the flag is already set, when
    JAX_PLATFORMS names a non-CPU platform, or when `count` < 2. Returns whether it set it.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    platforms = os.environ.get("JAX_PLATFORMS", "cpu")
    count = os.cpu_count() if count is None else count
    if CPU_DEVICE_FLAG in flags or "cpu" not in platforms or not count or count < 2:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEVICE_FLAG}={count}".strip()
    return True
