"""Device parallelism: the one module that names a Mesh, a mesh axis or a multi-host call.

Data parallelism only: the batch is split over a 1-D mesh with axis 'data' spanning every
device, parameters and optimiser state are replicated. Under `jax.jit` with these shardings a
plain mean over the batch is already the global mean, so no collective is written by hand.

Multi-host: `initialize_distributed` joins the processes (cluster auto-detection or a
hand-started coordinator); the mesh lists the devices process by process, so host p's devices
hold rows [p B/P, (p + 1) B/P) of a global batch of B, exactly the rows the data layer gives
host p (`diffjax.data.pipeline`). `is_primary` says who writes logs; `gather` and `sync` are the
only cross-host calls outside the jitted step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# On CPU, XLA's default convolutions run on one thread (below); splitting the batch over
# several host "devices" uses the other cores (ENV-NOTES: 1.6-1.9x on 2 cores).
CPU_DEVICE_FLAG = "--xla_force_host_platform_device_count"
# jaxlib 0.10 hands convolutions and matrix products to YNNPACK fusions on CPU, which run on one
# thread; with them off XLA's own (Eigen) kernels use every core of a device (README, "Side by
# side"). The flag is experimental: set only for the jaxlib versions it was measured on, since
# XLA aborts on an unknown flag.
CPU_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_YNN_JAXLIB = ((0, 10), (0, 11))  # [first, last) jaxlib (major, minor) with the flag


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices) with the single axis 'data'.

    Built with `Mesh(...)` rather than `jax.make_mesh`, whose axes default to Explicit in this
    JAX version and then reject unsharded inputs.
    """
    devices = jax.devices() if devices is None else list(devices)
    # process by process (stable: each host's own order kept), so that host p's devices are
    # one contiguous block of rows of the batch axis
    devices = sorted(devices, key=lambda d: d.process_index)
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


def host_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """(start, stop): the rows of a global batch that this process's devices of `mesh` hold."""
    index_map = data_sharding(mesh).addressable_devices_indices_map((global_batch,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [global_batch if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    return min(starts), max(stops)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Global arrays sharded on 'data' from this host's piece of every leaf of `batch`.

    Args:
      batch: a pytree of numpy arrays [B_local, ...]; B_local = B_global / process_count, host
        p's piece being rows [p B_local, (p + 1) B_local) of the global batch (the data layer's
        convention).
      mesh: the data mesh.
    Returns:
      the same pytree of `jax.Array`s of shape [B_global, ...] sharded over 'data', built with
      `jax.make_array_from_process_local_data` (no host ever holds the global batch).
    """
    sharding = data_sharding(mesh)
    n_local = len(mesh.local_devices)
    count, index = jax.process_count(), jax.process_index()

    def put(x):
        x = np.asarray(x)
        check_batch_divisible(x.shape[0], n_local, "per-host batch size")
        global_shape = (x.shape[0] * count,) + x.shape[1:]
        if count > 1:
            want = (index * x.shape[0], (index + 1) * x.shape[0])
            if host_rows(mesh, global_shape[0]) != want:
                raise ValueError(
                    f"process {index}'s devices hold rows {host_rows(mesh, global_shape[0])} of "
                    f"the global batch, not its data rows {want}: build the mesh with make_mesh"
                )
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of `tree` on all devices of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process JAX run; call before anything else touches the devices.

    With no arguments `jax.distributed.initialize()` detects the cluster (SLURM, Open MPI,
    Cloud TPU, Kubernetes). A hand-started cluster passes all three: the coordinator's
    "host:port" (process 0's machine), the number of processes and this one's id. On CPU the
    cross-process collectives are gloo's (XLA's CPU client has none by default).

    Raises:
      ValueError: only some of the three hand-started arguments, or an id outside the range.
    """
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    missing = [k for k, v in given.items() if v is None]
    if 0 < len(missing) < 3:
        raise ValueError(
            f"a hand-started cluster needs coordinator_address, num_processes and process_id; "
            f"missing {missing} (got {given}); pass none of them for cluster auto-detection"
        )
    if not missing:
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer; got {num_processes!r}")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must lie in [0, num_processes={num_processes}); got {process_id!r}"
            )
        if ":" not in str(coordinator_address):
            raise ValueError(
                f"coordinator_address must be 'host:port'; got {coordinator_address!r}"
            )
    if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def process_index() -> int:
    """This process's index in [0, process_count())."""
    return jax.process_index()


def process_count() -> int:
    """The number of processes (hosts) of the run."""
    return jax.process_count()


def is_primary() -> bool:
    """True on the one process (index 0) that writes logs, images, plots and JSON files."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to do on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(x: Any) -> Any:
    """The whole value of every leaf of `x` as numpy on every host (a global array sharded over
    hosts is all-gathered; a host-local one is just read)."""

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, x)


def broadcast_from_primary(x: Any) -> Any:
    """Process 0's value of the numpy pytree `x` on every process (a no-op on one process)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(x)


class Preempted(Exception):
    """Training stopped at a pre-emption notice (SIGTERM) after saving a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"pre-empted: checkpoint saved at step {step}; rerun to resume")
        self.step = step


class PreemptionWatch:
    """`with PreemptionWatch() as watch: ... if watch.reached(step): save and stop`.

    One process: a SIGTERM handler sets a flag (the previous handler is restored on exit).
    Several processes: JAX's pre-emption sync manager (installed by jax.distributed for
    SIGTERM) makes every process see the notice at the same step, so all save that step.
    """

    def __init__(self):
        self.notice = False
        self._previous = None
        self._multi = jax.process_count() > 1

    def _handler(self, signum, frame) -> None:
        del signum, frame
        self.notice = True

    def __enter__(self) -> PreemptionWatch:
        import signal
        import threading

        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` (collective in a multi-host run)."""
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # no sync manager (e.g. a cluster without the service)
                return False
        return self.notice


def _jaxlib_version() -> tuple[int, int]:
    from importlib import metadata

    try:
        return tuple(int(v) for v in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def set_cpu_device_count(count: int | None = None) -> bool:
    """Ask XLA for `count` host devices (default: the number of CPU cores) via XLA_FLAGS.

    Only effective before JAX initialises its backends, so launch programs call this before
    importing anything that touches devices. Does nothing when JAX_PLATFORMS names a
    non-CPU platform; leaves the device count alone when its flag is already set or when
    `count` < 2. Returns whether it set the device count.

    On CPU with jaxlib 0.10 it also turns off the YNNPACK fusions (`CPU_YNN_FLAG`), unless
    XLA_FLAGS names that flag already, whatever `count` is: with them off, XLA's own kernels run a
    device's convolutions on all its threads (measured side by side, README: U-Net sampling
    through the launcher 1.2x faster, MLP sampling 1.2-1.4x, the 4.4M U-Net's train step 1.13x,
    the 1.11M one unchanged, the CIFAR miniature's 0.94x; the same losses to 5 digits).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    platforms = os.environ.get("JAX_PLATFORMS", "cpu")
    if "cpu" not in platforms:
        return False
    first, last = CPU_YNN_JAXLIB
    if CPU_YNN_FLAG not in flags and first <= _jaxlib_version() < last:
        flags = f"{flags} {CPU_YNN_FLAG}=".strip()
        os.environ["XLA_FLAGS"] = flags
    count = os.cpu_count() if count is None else count
    if CPU_DEVICE_FLAG in flags or not count or count < 2:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEVICE_FLAG}={count}".strip()
    return True
