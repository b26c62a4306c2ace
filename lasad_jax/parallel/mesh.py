"""The device mesh from `config.mesh`: sizes for `data`, `fsdp` and `tensor`.

At most one axis may be -1, meaning "all the devices the others leave"; the product must
equal the number of devices, so no device idles unnoticed. Devices are laid out by
`jax.make_mesh`, which puts `tensor` (the last, most communication-hungry axis) on the
fastest links (the devices of one host, or neighbours on a TPU torus).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")
# The mesh axes a batch is split over: both data-parallel axes.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: Mapping[str, Any] | None, num_devices: int) -> tuple[int, ...]:
    """Resolves `{data, fsdp, tensor}` (missing axes are 1; one may be -1) to sizes whose
    product is `num_devices`; raises naming the field otherwise."""
    mesh_config = dict(mesh_config or {"data": -1})
    unknown = sorted(set(mesh_config) - set(AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {unknown}; valid axes: {list(AXES)}")
    sizes = []
    for axis in AXES:
        size = mesh_config.get(axis, 1)
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"config.mesh.{axis} must be a positive int or -1 (fill), "
                             f"got {size!r}")
        sizes.append(size)
    fill = [axis for axis, size in zip(AXES, sizes) if size == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {fill}")
    fixed = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh: {num_devices} devices cannot be split into "
                f"{dict(zip(AXES, sizes))}: the fixed axes' product {fixed} must divide it")
        sizes[AXES.index(fill[0])] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"config.mesh {dict(zip(AXES, sizes))} has {fixed} devices, but "
                         f"JAX sees {num_devices}; make the product equal it or set one "
                         "axis to -1")
    return tuple(sizes)


def build_mesh(mesh_config: Mapping[str, Any] | None = None,
               devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh over `devices` (default: all of them, across every process)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces a batch is cut into: the product of the data-parallel axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
