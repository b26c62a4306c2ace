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
import time
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lasad_jax.parallel.state import abstract_with_shardings, place_state
from lasad_jax.training.config import LoopConfig


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected; the message says what to do."""


class Checkpointer:
    """Keeps the last `keep` checkpoints under `directory` (absolute path required by
    Orbax; relative paths are resolved here)."""

    def __init__(self, directory: str, *, keep: int = 1, save_every: int = 1,
                 read_only: bool = False):
        """`read_only` (sampling) never creates, saves or deletes anything."""
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        # `cleanup_tmp_directories`: a process killed mid-save leaves a temporary
        # directory that never became a step; it is removed at the next start.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(save_every, 1),
            enable_async_checkpointing=True, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only)
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

    def restore_params(self, abstract_params: Any, *, use_ema: bool,
                       step: int | None = None) -> tuple[int, Any]:
        """`(step, params)`: the EMA (`use_ema`) or raw parameters of the newest (or
        `step`'s) checkpoint, restored alone into the structure, dtypes and shardings of
        `abstract_params`. Nothing else of the state is read: no optimizer has to be
        built to restore weights for sampling or evaluation."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        key = "ema_params" if use_ema else "params"
        target = {key: abstract_params}
        restore_args = jax.tree.map(
            lambda leaf: ocp.ArrayRestoreArgs(sharding=getattr(leaf, "sharding", None)),
            target)
        # The state item is a PyTree on disk; reading a subtree needs the PyTree handler
        # and `partial_restore`, so a second, read-only manager does it.
        reader = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
            item_handlers={"state": ocp.PyTreeCheckpointHandler()})
        try:
            args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                          partial_restore=True)
            restored = reader.restore(step, args=ocp.args.Composite(state=args))
        finally:
            reader.close()
        return step, restored["state"][key]

    def restore_newest_readable(self, target: Any, data_iterator: Any | None = None
                                ) -> tuple[int, Any]:
        """`(step, state)` of the newest checkpoint that restores into `target`.

        A truncated or corrupted newest checkpoint is not fatal: the previous one is
        tried. Steps newer than the one restored are then moved aside (renamed
        `corrupt-<step>-<time>`, never deleted) with a warning, so the resumed run can
        save those steps again. If no step restores, nothing is moved (the likelier cause
        is a config that no longer matches the checkpoints) and `CheckpointError` lists
        each step's error.
        """
        errors: dict[int, str] = {}
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(target, data_iterator, step=step)
            except Exception as err:  # noqa: BLE001 - any failure to read means "unusable"
                errors[step] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                logging.warning("checkpoint step %d in %s cannot be restored (%s); trying "
                                "the previous one", step, self.directory, errors[step])
                continue
            if errors:
                self._move_aside(errors, step)
            return step, state
        listing = "; ".join(f"step {k}: {v}" for k, v in errors.items())
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored ({listing}). If the config "
            "changed since they were written, restore it; otherwise move the directory "
            "away to start afresh.")

    def _move_aside(self, bad_steps: Any, resumed: int) -> None:
        """Renames unreadable steps (process 0 only; the others wait for it)."""
        if jax.process_index() == 0:
            for bad in bad_steps:
                moved = os.path.join(self.directory, f"corrupt-{bad}-{int(time.time())}")
                os.rename(os.path.join(self.directory, str(bad)), moved)
                logging.warning("moved unreadable checkpoint step %d to %s; resuming from "
                                "step %d", bad, moved, resumed)
        multihost_utils.sync_global_devices("lasad_checkpoint_move_aside")
        self.manager.reload()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Finishes saves in flight even when the loop raised (a divergence, Ctrl-C):
        the last good checkpoint is committed, not left as a temporary directory."""
        self.wait()
        self.close()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def open_for_reading(workdir: str) -> Checkpointer:
    """The read-only checkpointer of `workdir`, or FileNotFoundError saying what to do."""
    directory = checkpoint_dir(workdir)
    checkpointer = Checkpointer(directory, read_only=True) if os.path.isdir(directory) else None
    if checkpointer is None or checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {directory}: train first with --mode=train "
                                f"and the same --workdir")
    return checkpointer


def resume_or_start(workdir: str, loop: LoopConfig, init: Callable[[], Any] | Any, mesh: Mesh,
                    data_iterator: Any) -> tuple[Checkpointer, Any, int, Any]:
    """Opens `workdir/checkpoints` (keeping `loop.keep_checkpoints`, saving every
    `loop.checkpoint_every` steps); returns `(checkpointer, state, first step to run - 1,
    state shardings)`.

    With a checkpoint, the newest is restored straight into `mesh`'s shardings (an
    abstract target: no fresh state is built first, and a run saved on another mesh
    shape is resharded on load) and `data_iterator` is rewound. Without one, `init`
    (zero-argument, returns the state pytree) runs jitted with sharded outputs; `init`
    may also be a state built on the host, which is then put on the mesh.
    """
    checkpointer = Checkpointer(checkpoint_dir(workdir), keep=loop.keep_checkpoints,
                                save_every=loop.checkpoint_every)
    start = 0
    if checkpointer.latest_step() is not None:
        target, shardings = abstract_with_shardings(init, mesh)
        start, state = checkpointer.restore_newest_readable(target, data_iterator)
        logging.info("resumed from %s at step %d", checkpointer.directory, start)
    else:
        state, shardings = place_state(init, mesh)
    return checkpointer, state, start, shardings


def abstract(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a concrete `tree` for `restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
