"""Orbax checkpointing of the train state together with the data iterator's position.

A checkpoint is one step directory holding two items: `state` (step, params, optimizer
state, EMA params, rng) and `data` (grain's iterator state), so a resumed run continues
with exactly the batches an uninterrupted run would have seen. Saves are asynchronous;
Orbax writes into a temporary directory and renames it when complete, so a crash mid-save
never replaces the last good checkpoint. The caller checks the state is finite first.

Arrays are saved sharded: each process writes its own shards (Orbax/tensorstore), and a
restore reads into whatever shardings the target asks for, so a run may resume on a
different mesh or number of hosts.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from lasad_jax.parallel.state import abstract_with_shardings, place_state


class Checkpointer:
    """Keeps the last `keep` checkpoints under `directory` (absolute path required by
    Orbax; relative paths are resolved here)."""

    def __init__(self, directory: str, *, keep: int = 1, save_every: int = 1,
                 read_only: bool = False):
        """`read_only` (sampling) never creates, saves or deletes anything."""
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(save_every, 1),
            enable_async_checkpointing=True, create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any | None = None, *,
             force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iterator: Any | None = None,
                step: int | None = None) -> Any:
        """Restores into the structure, dtypes and shardings of `abstract_state` (an
        `eval_shape` of a freshly built state), and rewinds `data_iterator` in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_params(self, abstract_state: Any, *, use_ema: bool) -> tuple[int, Any]:
        """Latest (step, params or EMA params) for sampling; no iterator involved."""
        step = self.latest_step()
        state = self.restore(abstract_state, step=step)
        return step, state.ema_params if use_ema else state.params

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def resume_or_start(workdir: str, train_cfg: Any, init: Callable[[], Any] | Any, mesh: Mesh,
                    data_iterator: Any) -> tuple[Checkpointer, Any, int, Any]:
    """Opens `workdir/checkpoints` (keeping `train_cfg.keep_checkpoints`, saving every
    `train_cfg.checkpoint_every` steps); returns `(checkpointer, state, first step to run
    - 1, state shardings)`.

    With a checkpoint, the newest is restored straight into `mesh`'s shardings (an
    abstract target: no fresh state is built first, and a run saved on another mesh
    shape is resharded on load) and `data_iterator` is rewound. Without one, `init`
    (zero-argument, returns the state pytree) runs jitted with sharded outputs; `init`
    may also be a state built on the host, which is then put on the mesh.
    """
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                keep=train_cfg.keep_checkpoints,
                                save_every=train_cfg.checkpoint_every)
    start = checkpointer.latest_step() or 0
    if start:
        target, shardings = abstract_with_shardings(init, mesh)
        state = checkpointer.restore(target, data_iterator)
        logging.info("resumed from %s at step %d", checkpointer.directory, start)
    else:
        state, shardings = place_state(init, mesh)
    return checkpointer, state, start, shardings


def abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a concrete `tree` for `restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
