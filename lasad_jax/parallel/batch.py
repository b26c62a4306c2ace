"""Global batches from per-process data.

Each process reads only its own slice of the data (grain, sharded by
`jax.process_index()`), holding `global_batch / process_count` examples. Those host
arrays become one global `jax.Array` split over the mesh's data-parallel axes with
`jax.make_array_from_process_local_data`, so the jitted step sees the global batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lasad_jax.parallel.mesh import BATCH_AXES, batch_shards


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis over `data` x `fsdp`, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def local_batch_size(global_size: int, mesh: Mesh, field: str = "config.batch_size") -> int:
    """This process's share of a global batch; raises naming `field` when the batch does
    not split evenly over the data-parallel devices and processes, or when the mesh puts
    one batch shard on devices of several processes (`check_shards_within_processes`)."""
    check_shards_within_processes(
        np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices), field)
    shards, processes = batch_shards(mesh), jax.process_count()
    if global_size % shards:
        raise ValueError(f"{field}={global_size} must be divisible by the {shards} "
                         f"data-parallel devices (config.mesh data x fsdp = {shards})")
    if global_size % processes:
        raise ValueError(f"{field}={global_size} must be divisible by the {processes} "
                         "processes")
    return global_size // processes


def check_shards_within_processes(process_of_device: np.ndarray, field: str) -> None:
    """Raises unless every batch shard lies on the devices of one process.

    `process_of_device` is the mesh's device array (axes data, fsdp, tensor) mapped to
    process indices. A shard's devices hold the same rows; when they belong to several
    processes (a `tensor` axis wider than one host's devices), each of those processes
    would hand over its own, different examples for the same rows, and
    `make_array_from_process_local_data` would keep one process's copy on some devices
    and another's on the rest: a batch silently smaller and inconsistent. Each process
    reads its own slice of the data, so that layout is refused instead of supported.
    """
    tensor = process_of_device.shape[-1]
    rows = process_of_device.reshape(-1, tensor)
    for shard, processes in enumerate(rows):
        if len(set(processes.tolist())) > 1:
            local = int(np.sum(process_of_device == processes[0]))
            raise ValueError(
                f"{field}: the mesh puts batch shard {shard} on the devices of processes "
                f"{sorted(set(processes.tolist()))} (config.mesh.tensor={tensor} spans "
                f"processes of {local} devices each); every process reads its own "
                f"examples, so set config.mesh.tensor to at most {local} and a divisor of it")


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's host arrays into global arrays split along the batch."""
    out = {}
    for name, value in local.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_process_local_data(
            batch_sharding(mesh, value.ndim), value)
    return out


def global_from_full(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from a batch every process holds whole (evaluation passes): each
    device takes its rows by global index, so the result does not depend on how the
    mesh orders processes."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_callback(
            value.shape, batch_sharding(mesh, value.ndim), lambda idx, v=value: v[idx])
    return out
