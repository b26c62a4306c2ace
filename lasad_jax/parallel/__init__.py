"""Device parallelism: the mesh, the logical-axis rules, sharded state and global batches.

One mesh with three named axes serves every job:

* `data`: pure data parallelism (parameters replicated);
* `fsdp`: data parallelism with parameters, optimizer state and EMA sharded along it
  (ZeRO-3 style: XLA gathers each weight when a layer needs it);
* `tensor`: Megatron-style model parallelism over heads, the MLP hidden units and the
  vocabulary.

The model names the axes of its parameters (`logical_axes` metadata: "embed", "mlp",
"heads", "vocab", ...); `rules.LOGICAL_RULES` maps those names to mesh axes. Batches are
split over `data` x `fsdp`. The whole program is written for the global arrays; XLA's
SPMD partitioner inserts the collectives, so one code path runs on 1 CPU or a pod.
"""

from lasad_jax.parallel.batch import batch_sharding, global_batch, local_batch_size
from lasad_jax.parallel.mesh import (
    AXES,
    MeshConfig,
    batch_shards,
    build_mesh,
    mesh_shape,
    process_0_decides,
)
from lasad_jax.parallel.rules import LOGICAL_RULES, constrain, spec_for
from lasad_jax.parallel.state import replicated, sharded_init, state_shardings

__all__ = [
    "AXES", "LOGICAL_RULES", "MeshConfig", "batch_shards", "batch_sharding", "build_mesh",
    "constrain", "global_batch", "local_batch_size", "mesh_shape", "process_0_decides",
    "replicated", "sharded_init", "spec_for", "state_shardings",
]
