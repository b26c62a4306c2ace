"""The device mesh of `config.mesh`: sizes for `data`, `fsdp` and `tensor`.

At most one axis may be -1, meaning "all the devices the others leave"; the product must
equal the number of devices, so no device idles unnoticed. Devices are laid out by
`jax.make_mesh`, which puts `tensor` (the last, most communication-hungry axis) on the
fastest links (the devices of one host, or neighbours on a TPU torus).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh

from lasad_jax.validation import ConfigError, Problems, is_int

AXES = ("data", "fsdp", "tensor")
# The mesh axes a batch is split over: both data-parallel axes.
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Devices per mesh axis; one axis may be -1 (the devices the others leave). An axis
    a config leaves out is 1; with no mesh at all every device is data-parallel."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        problems = Problems("mesh")
        for axis in AXES:
            size = getattr(self, axis)
            problems.check(is_int(size) and (size >= 1 or size == -1), axis,
                           f"must be a positive int or -1 (fill), got {size!r}")
        fill = [axis for axis in AXES if getattr(self, axis) == -1]
        if len(fill) > 1:
            problems.add_block(f"at most one axis may be -1, got {fill}")
        problems.raise_if_any()

    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in AXES}


ALL_DATA = MeshConfig(data=-1)


def mesh_shape(mesh: MeshConfig | None, num_devices: int) -> tuple[int, ...]:
    """Resolves the axis sizes (the -1 one filled) to sizes whose product is
    `num_devices`; raises naming the field otherwise. None: all devices on `data`."""
    sizes = (mesh or ALL_DATA).sizes()
    fixed = math.prod(s for s in sizes.values() if s != -1)
    fill = [axis for axis, size in sizes.items() if size == -1]
    if fill:
        if num_devices % fixed:
            raise ConfigError([f"mesh: {num_devices} devices cannot be split into {sizes}: "
                               f"the fixed axes' product {fixed} must divide it"])
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError([f"mesh {sizes} has {fixed} devices, but JAX sees {num_devices}; "
                           "make the product equal it or set one axis to -1"])
    return tuple(sizes[axis] for axis in AXES)


def data_parallel_size(mesh: MeshConfig, num_devices: int) -> int | None:
    """The devices a batch is split over (data x fsdp), None where the mesh does not fit
    `num_devices` (`batch_problems` says why)."""
    try:
        shape = dict(zip(AXES, mesh_shape(mesh, num_devices)))
    except ConfigError:
        return None
    return math.prod(shape[axis] for axis in BATCH_AXES)


def batch_problems(mesh: MeshConfig, num_devices: int,
                   batches: Mapping[str, int]) -> list[str]:
    """Whether the mesh fits `num_devices` and every batch (field name -> global size)
    splits evenly over its data-parallel devices; one line per problem."""
    try:
        mesh_shape(mesh, num_devices)
    except ConfigError as err:
        return list(err.problems)
    shards = data_parallel_size(mesh, num_devices)
    return [f"{field}={size} must be a multiple of {shards}, the data-parallel devices "
            f"(mesh data x fsdp over {num_devices} devices)"
            for field, size in batches.items() if is_int(size) and size >= 1 and size % shards]


def build_mesh(mesh: MeshConfig | None = None,
               devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh over `devices` (default: all of them, across every process)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces a batch is cut into: the product of the data-parallel axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def process_0_decides(flag: bool) -> bool:
    """Process 0's `flag` on every process: a choice that decides whether a collective
    computation runs (generate or not, evaluate or not) must be the same everywhere,
    even when the processes see different local files."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
