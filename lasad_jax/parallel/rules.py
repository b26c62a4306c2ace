"""Logical axis names of parameters and activations, and how they map to mesh axes.

The model annotates each parameter with the meaning of its axes (`logical_axes`
metadata); this table decides which mesh axis, if any, splits each meaning. Changing the
parallelism strategy is an edit here, not in the model. A dimension that the mesh axis
does not divide stays whole (replicated), so odd sizes such as a 17-token vocabulary or
11 class rows still run. For the model's width (`fsdp`) and its heads and MLP units
(`tensor`) that would replicate nearly everything: `split_problems` refuses such a mesh
before a run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from lasad_jax.parallel.mesh import AXES, BATCH_AXES, MeshConfig, mesh_shape
from lasad_jax.validation import ConfigError

# logical name -> mesh axes (None: never split).
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),     # model width: FSDP shards weights along it
    "mlp": ("tensor",),     # SwiGLU hidden units
    "heads": ("tensor",),   # attention heads (q, k, v, gate and output projections)
    "vocab": ("tensor",),   # token embedding rows and output logits
    "classes": None,        # class embedding rows: few, replicated
    "norm": None,           # RMSNorm scales, per-head decays
}


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh_shape: dict[str, int],
             rules: dict[str, tuple[str, ...] | None] | None = None) -> PartitionSpec:
    """The PartitionSpec of an array with logical axes `names` on a mesh of `mesh_shape`.

    A mesh axis is used at most once per array and only when it divides the dimension;
    mesh axes of size 1 are left out, so specs stay readable."""
    rules = LOGICAL_RULES if rules is None else rules
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        axes = [a for a in (rules.get(name) or ()) if mesh_shape.get(a, 1) > 1 and a not in used]
        size = 1
        for a in axes:
            size *= mesh_shape[a]
        if not axes or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def split_problems(mesh: MeshConfig, num_devices: int, *, dim: int, num_heads: int,
                   mlp_hidden: int) -> list[str]:
    """One line per model dimension that its mesh axis would not split.

    `spec_for` leaves such a dimension whole. `fsdp` splits only the width (`embed`), so
    a width it does not divide keeps every weight, both Adam moments and the EMA whole
    on every device (3B, dim 3200, on fsdp=256: about 50 GB per device); a `tensor` that
    does not divide the heads or the MLP's hidden units splits `qkv` but not the output
    projection or the MLP, so devices hold fractions of heads. Both are refused. (The
    mesh's own problems are `batch_problems`'.)"""
    try:
        shape = dict(zip(AXES, mesh_shape(mesh, num_devices)))
    except ConfigError:
        return []
    fsdp, tensor = shape["fsdp"], shape["tensor"]
    out = []
    if fsdp > 1 and dim % fsdp:
        out.append(f"mesh.fsdp={fsdp} does not divide model.dim={dim}: no weight would be "
                   "sharded and every device would hold the whole training state; choose "
                   f"an fsdp that divides {dim} and put the other devices on mesh.data")
    if tensor > 1:
        for what, size in (("model.num_heads", num_heads),
                           ("the MLP's hidden size", mlp_hidden)):
            if size % tensor:
                out.append(f"mesh.tensor={tensor} does not divide {what} ({size}): devices "
                           "would hold parts of heads and unsplit MLP weights; choose a "
                           f"tensor that divides {num_heads} and {mlp_hidden}")
    return out


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by logical names inside a jitted program run under
    `jax.set_mesh(mesh)`; a no-op without a mesh, so models also run bare."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(names, x.shape, dict(mesh.shape)))


Names = tuple  # logical names of one array's axes, e.g. ("batch", None, "heads", None)


def _is_names(x: Any) -> bool:
    return isinstance(x, tuple) and not hasattr(x, "_fields") and all(
        n is None or isinstance(n, str) for n in x)


def batch_axes(make: Callable[[int], Any], batch: int) -> Any:
    """The batch axis of every array `make(batch)` returns (-1 for arrays without one),
    found by comparing its shapes with `make(batch + 1)` (nothing is computed). For
    pytrees such as decoding caches, whose arrays put the batch on different axes (or
    merge it with the heads, batch-major)."""
    small = jax.eval_shape(lambda: make(batch))
    large = jax.eval_shape(lambda: make(batch + 1))

    def axis(a, b):
        return next((i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n), -1)

    return jax.tree.map(axis, small, large)


def names_along(axes: Any, tree: Any, name: str = "batch") -> Any:
    """Logical names for every array of `tree`: `name` on the axis `axes` gives (from
    `batch_axes`), nothing elsewhere."""
    return jax.tree.map(lambda a, x: tuple(name if i == a else None for i in range(x.ndim)),
                        axes, tree)


def per_shard(fn: Callable[..., Any], in_names: Sequence[Any], out_names: Any
              ) -> Callable[..., Any]:
    """`fn` run on each device's own shards (`jax.shard_map`) inside a jitted program run
    under `jax.set_mesh(mesh)`, its arguments and results split by logical names; `fn`
    itself without a mesh, or on a mesh of one device.

    For a computation that is independent along the split axes (the token mixers'
    operators: every batch row and head on its own) and that XLA's partitioner cannot
    split: a Pallas kernel is a custom call, which Mosaic refuses to partition on TPU and
    which the GPU partitioner could only run whole on every device. `in_names` has one
    entry per argument, `out_names` one per result: a tuple of names for an array, or a
    pytree of them for a pytree (a decoding cache). A logical name is split only where
    every array that carries it can be split (`spec_for`: the mesh axes divide the
    dimension); otherwise it is left whole everywhere, so all devices see the same rows
    of every array. Inside, `fn` sees shard shapes."""

    def run(*args: Any) -> Any:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1:
            return fn(*args)
        if len(args) != len(in_names):
            raise ValueError(f"per_shard: {len(args)} arguments, {len(in_names)} in_names")
        out = jax.eval_shape(fn, *args)
        in_specs, out_specs = shard_specs(in_names, args, out_names, out, dict(mesh.shape))
        # check_vma=False: Pallas calls carry no varying-axes information to check.
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)(*args)

    return run


def shard_specs(in_names: Sequence[Any], args: Sequence[Any], out_names: Any, out: Any,
                mesh_shape: dict[str, int]) -> tuple[tuple[Any, ...], Any]:
    """`per_shard`'s (in_specs, out_specs): `spec_for` of every array (or shape struct),
    except that a logical name one array cannot split stays whole in all of them."""
    pairs = [(n, x) for names, tree in [*zip(in_names, args), (out_names, out)]
             for n, x in zip(jax.tree.leaves(names, is_leaf=_is_names), jax.tree.leaves(tree))]
    rules = dict(LOGICAL_RULES)
    for names, x in pairs:
        for name, axes in zip(names, spec_for(names, x.shape, mesh_shape)):
            if name is not None and axes is None and rules.get(name) and any(
                    mesh_shape.get(a, 1) > 1 for a in rules[name]):
                rules[name] = None

    def specs(names: Any, tree: Any) -> Any:
        return jax.tree.map(lambda n, x: spec_for(n, x.shape, mesh_shape, rules), names, tree,
                            is_leaf=_is_names)

    return tuple(specs(n, a) for n, a in zip(in_names, args)), specs(out_names, out)


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
