"""Sharded creation of the train state: no full copy ever sits on one device.

`state_shardings` reads the `logical_axes` metadata of every `nnx.Variable` in a (possibly
abstract) state tree. Parameters, the EMA copy and the optimizer's moments are all
Variables carrying that metadata (optax builds `mu`/`nu` with the parameters' tree
structure), so one walk shards them alike; everything else (step, rng, counters) is
replicated. `sharded_init` then runs the initialiser under `jax.jit` with those output
shardings: each device computes only its own shards.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lasad_jax.parallel.rules import spec_for


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """A tree of `NamedSharding`s with `tree`'s structure (Variables kept as nodes)."""
    mesh_shape = dict(mesh.shape)

    def sharding(x: Any) -> Any:
        if _is_variable(x):
            names = x.get_metadata().get("logical_axes")
            value = x.get_value()
            spec = (spec_for(names, value.shape, mesh_shape) if names is not None
                    else PartitionSpec())
            return x.replace(NamedSharding(mesh, spec))
        return replicated(mesh)

    return jax.tree.map(sharding, tree, is_leaf=_is_variable)


def sharded_init(init_fn: Callable[[], Any], mesh: Mesh) -> tuple[Any, Any]:
    """Runs `init_fn` (no arguments, returns a pytree of arrays) so that its outputs are
    born sharded; returns `(state, shardings)`."""
    abstract_state = jax.eval_shape(init_fn)
    shardings = state_shardings(abstract_state, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init_fn, out_shardings=shardings)()
    return state, shardings


def place_state(state_or_init: Any, mesh: Mesh) -> tuple[Any, Any]:
    """`sharded_init` for an init function; for a state already built on the host (the
    tokenizer trainer builds its losses' networks eagerly), puts it on the mesh."""
    if callable(state_or_init):
        return sharded_init(state_or_init, mesh)
    shardings = state_shardings(state_or_init, mesh)
    return jax.device_put(state_or_init, shardings), shardings


def abstract_with_shardings(state_or_init: Any, mesh: Mesh) -> tuple[Any, Any]:
    """`(abstract state carrying the mesh's shardings, shardings)`: the restore target for
    a checkpoint, so it lands on this mesh whatever mesh it was saved from."""
    abstract_state = jax.eval_shape(
        state_or_init if callable(state_or_init) else lambda: state_or_init)
    shardings = state_shardings(abstract_state, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
    return target, shardings
