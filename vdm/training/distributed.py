"""Data parallelism over every device of every process: one `data` mesh axis.

Parameters and optimizer state are replicated (PartitionSpec()), batches are
split along their batch axis (PartitionSpec('data') or, for the [K, B, ...]
stacks of several steps per call, PartitionSpec(None, 'data')). `jax.jit`
inserts the gradient all-reduce; the same train step runs on 1 device, N local
devices or several hosts.

Multi-host: call `initialize()` first (it wraps `jax.distributed.initialize`;
with no arguments JAX finds the cluster on TPU pods, SLURM and Kubernetes).
Each process then feeds its own part of every global batch (`vdm.data.pipeline`) and
`global_batch` assembles the global array with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vdm.errors import ConfigError, DataError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """jax.distributed.initialize; on CPU also selects gloo collectives so several processes can all-reduce."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by the CPU backend
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def use_cpu_devices(n: int) -> None:
    """Makes JAX's CPU backend `n` devices (config key 'cpu.devices'; 0 = leave JAX's default).

    Must run before JAX starts its backends (before any computation); `python -m vdm.main`
    calls it first thing. Started already with another count, it raises ConfigError.
    """
    if n <= 0 or jax.config.jax_num_cpu_devices == n:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialised
        raise _started_with_another_count(n) from None


def check_cpu_devices(n: int) -> None:
    """ConfigError if the run asks for `n` > 0 CPU devices and the CPU backend has another number."""
    if n > 0 and jax.default_backend() == "cpu" and jax.local_device_count() != n:
        raise _started_with_another_count(n)


def _started_with_another_count(n: int) -> ConfigError:
    return ConfigError(
        f"config key 'cpu.devices' = {n}, but JAX has started already with {jax.local_device_count('cpu')} CPU "
        f"device(s): run through python -m vdm.main, call vdm.training.distributed.use_cpu_devices({n}) before any "
        f"JAX computation, or set cpu.devices=0")


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Shards the axis after `leading_axes` unsharded axes over 'data'."""
    return NamedSharding(mesh, P(*([None] * leading_axes), "data"))


def constrain_to_batch(mesh: Mesh | None):
    """x -> x laid out batch-sharded over 'data' inside a jitted function (identity without a mesh).

    Applied to a network's input inside a sampler or an ODE solve, it makes every
    device run the network on its part of the batch.
    """
    if mesh is None:
        return lambda x: x
    sharding = batch_sharding(mesh)
    return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "training.batch_size") -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise DataError(f"config key '{key}' = {global_batch_size} is not divisible by the {n} devices; "
                        f"use a multiple of {n}")


def global_batch(local: dict, mesh: Mesh, leading_axes: int = 0) -> dict:
    """This process's part of a batch (numpy leaves) -> global jax.Arrays sharded over 'data'."""
    sharding = batch_sharding(mesh, leading_axes)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def to_host(x) -> np.ndarray:
    """A replicated or batch-sharded global array -> the full numpy array on every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def any_process(*flags: bool) -> tuple:
    """Each flag OR-ed over all processes, so every process takes the same branch (time limits, signals)."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.array(flags, np.int32)))
    return tuple(bool(x) for x in gathered.reshape(jax.process_count(), -1).any(axis=0))


def is_main_process() -> bool:
    return jax.process_index() == 0
