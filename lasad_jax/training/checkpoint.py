"""Orbax checkpointing of the train state together with the data iterator's position.

A checkpoint is one step directory holding two items: `state` (step, params, optimizer
state, EMA params, rng) and `data` (grain's iterator state), so a resumed run continues
with exactly the batches an uninterrupted run would have seen. Saves are asynchronous;
Orbax writes into a temporary directory and renames it when complete, so a crash mid-save
never replaces the last good checkpoint. The caller checks the state is finite first.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
from absl import logging
import orbax.checkpoint as ocp


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


def resume_or_start(workdir: str, train_cfg: Any, state: Any,
                    data_iterator: Any) -> tuple[Checkpointer, Any, int]:
    """Opens `workdir/checkpoints` (keeping `train_cfg.keep_checkpoints`, saving every
    `train_cfg.checkpoint_every` steps) and, when it holds a checkpoint, restores the
    newest into `state`'s structure and rewinds `data_iterator`; returns
    `(checkpointer, state, first step to run - 1)`."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                keep=train_cfg.keep_checkpoints,
                                save_every=train_cfg.checkpoint_every)
    start = checkpointer.latest_step() or 0
    if start:
        state = checkpointer.restore(abstract(state), data_iterator)
        logging.info("resumed from %s at step %d", checkpointer.directory, start)
    return checkpointer, state, start


def abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of `tree` for `restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
