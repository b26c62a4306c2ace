"""Orbax checkpointing of the train state together with the data iterator's position.

A checkpoint is one step directory holding two items: `state` (step, params, optimizer
state, EMA params, rng) and `data` (grain's iterator state), so a resumed run continues
with exactly the batches an uninterrupted run would have seen. Saves are asynchronous;
Orbax writes into a temporary directory and renames it when complete, so a crash mid-save
never replaces the last good checkpoint. The caller checks the state is finite first.

Arrays are saved sharded: each process writes its own shards (Orbax/tensorstore), and a
restore reads into whatever shardings the target asks for, so weights load on any mesh
and any number of hosts (sampling, evaluation, the notebook). Training resumes on another
mesh, but only with the number of processes that saved: grain keeps each process's data
position in its own file (`data/process_<i>-of-<n>.json`), and another count is refused
in one line before anything is read (`check_processes`).

Every step also records what made it (`identity`: the task, the model's architecture,
the tokenizer's fingerprint and, for training, the data order: `data_order`). Before
anything is restored the run's own identity is compared with it, and a checkpoint of
another model, tokenizer or data order is refused in one line that names the differing
field; for checkpoints written before the record existed, the arrays' shapes are
compared instead. Every job that restores (training, sampling, evaluation, the
notebook) goes through `restore_newest`: the newest step that reads, falling back to
the previous one, with the same messages.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any, Callable, TypeVar

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lasad_jax.files import is_remote, listdir, move, require_space, require_writable
from lasad_jax.parallel.state import abstract_with_shardings, place_state
from lasad_jax.training.config import LoopConfig

T = TypeVar("T")
IDENTITY_KEY = "lasad_run"  # the key of the run's identity in each step's custom metadata
# Where a model field's value comes from, for the messages: these are never set directly.
DERIVED_FROM = {"model.vocab_size": "the tokenizer's vocabulary",
                "model.grid": "the tokenizer's image_size",
                "model.num_classes": "data.num_classes",
                "data_order.batch_size": "config.batch_size",
                "data_order.seed": "config.seed",
                "data_order.train_examples": "the training split's size",
                "data_order.split_seed": "config.data.seed",
                "data_order.dataset": "the training examples, config.data"}


def data_order(*, batch_size: int, seed: int, train_examples: int,
               split_seed: int | None = None,
               dataset: str | None = None) -> dict[str, int | str]:
    """What the saved data position means, recorded by training runs beside their model's
    identity: grain saves how far the iterator got, in batches of a shuffle drawn from
    the seed over the dataset, so a run resumed with another batch size, seed or
    dataset would silently continue from another point of another order. `split_seed`
    (`data.seed`, for the datasets that draw their train/val split from it) too: the
    same size of split, other images, validation images among them. `dataset`: which
    training examples (the generator's `data.pipeline.dataset_identity`, the tokenizer's
    image source's `fingerprint`), so that another dataset of the same size is not
    taken for this one. Readers (sampling, evaluation) record none,
    so they are never refused for it; checkpoints made before a field was recorded are
    not compared on it."""
    order: dict[str, int | str] = {"batch_size": batch_size, "seed": seed,
                                   "train_examples": train_examples}
    if split_seed is not None:
        order["split_seed"] = split_seed
    if dataset is not None:
        order["dataset"] = dataset
    return order


# grain's file per process in a step's `data` item; the group is the process count.
_PROCESS_FILE = re.compile(r"process_\d+-of-(\d+)\.json")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected; the message says what to do."""


class CheckpointMismatch(CheckpointError):
    """The checkpoints were written by another run (model, tokenizer): restoring would
    fail or, worse, succeed with the wrong weights. Nothing is tried or moved."""


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def _short(value: Any) -> str:
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19]  # "sha256:" and 12 hex digits
    return repr(value)


def identity_differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """`field is A there, B here` for each field the two identities both hold and
    disagree on; a field one side does not record (None, or absent) is not compared."""
    old, new = _flat(recorded), _flat(expected)
    lines = []
    for key in sorted(set(old) & set(new)):
        if old[key] is None or new[key] is None or old[key] == new[key]:
            continue
        origin = f" (from {DERIVED_FROM[key]})" if key in DERIVED_FROM else ""
        lines.append(f"{key}{origin} is {_short(old[key])} there, {_short(new[key])} here")
    return lines


def _path_name(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path).removesuffix(".value"): tuple(getattr(leaf, "shape", ()))
            for path, leaf in leaves}


def shape_differences(stored: Any, target: Any) -> list[str]:
    """How the checkpoint's tree metadata `stored` differs from `target` (the abstract
    tree to restore) within the parts `target` restores (`{"ema_params": ...}` compares
    only the EMA weights): arrays missing on either side, or of another shape."""
    have, want = _shapes(stored), _shapes(target)
    parts = {name.split(".")[0] for name in want}
    have = {name: shape for name, shape in have.items() if name.split(".")[0] in parts}
    lines = []
    for name, shape in want.items():
        if name not in have:
            lines.append(f"{name} is missing there")
        elif have[name] != shape:
            lines.append(f"{name} is {have[name]} there, {shape} here")
    lines += [f"{name} is there, not here" for name in have if name not in want]
    return lines


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays of `tree` (concrete or abstract): what a checkpoint of it takes."""
    return sum(int(np.prod(getattr(x, "shape", ()), dtype=np.int64)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


class Checkpointer:
    """Keeps the last `keep` checkpoints under `directory` (absolute path required by
    Orbax; relative paths are resolved here)."""

    def __init__(self, directory: str, *, keep: int = 1, save_every: int = 1,
                 read_only: bool = False, identity: Mapping[str, Any] | None = None):
        """`read_only` (sampling) never creates, saves or deletes anything. `identity`
        (what this run is: `generator_identity`, `tokenizer_identity`) is recorded with
        every save and compared before every restore."""
        if keep < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {keep}")
        self.directory = directory if is_remote(directory) else os.path.abspath(directory)
        self.read_only = read_only
        self.identity = dict(identity) if identity is not None else None
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

    def require_space(self, state: Any, what: str) -> None:
        """`OutputError` unless the disk has room for one more checkpoint of `state`
        (Orbax deletes the oldest only after the new one is complete); each process
        writes its share."""
        require_space(self.directory, tree_bytes(state) // jax.process_count(), what)

    def save(self, step: int, state: Any, data_iterator: Any | None = None, *,
             force: bool = False) -> bool:
        """Saves asynchronously, after checking the disk has room (`require_space`), so
        a full disk stops the run with one line instead of failing in Orbax's
        background thread."""
        if force or self.manager.should_save(step):
            self.require_space(state, f"checkpoint step {step}")
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        metadata = {IDENTITY_KEY: self.identity} if self.identity is not None else None
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force,
                                 custom_metadata=metadata)

    def recorded_identity(self, step: int) -> dict[str, Any] | None:
        """The identity step `step` was saved with; None for checkpoints written before
        identities were recorded (or whose metadata cannot be read)."""
        try:
            custom = self.manager.metadata(step).custom_metadata or {}
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore will tell
            return None
        recorded = custom.get(IDENTITY_KEY)
        return dict(recorded) if isinstance(recorded, Mapping) else None

    def check_fits(self, step: int, target: Any) -> None:
        """Raises `CheckpointMismatch` when step `step` was written by another run:
        its recorded identity differs from this run's (naming the fields), or, for a
        checkpoint without one, its arrays' shapes differ from `target`'s (the abstract
        tree restored from the `state` item). Unreadable metadata passes: the restore
        itself then fails and the previous step is tried."""
        recorded = self.recorded_identity(step)
        where = f"the checkpoint at step {step} in {self.directory}"
        fix = "use the config it was trained with, or another --workdir for this one"
        if recorded is not None and self.identity is not None:
            diff = identity_differences(recorded, self.identity)
            if diff:
                raise CheckpointMismatch(f"{where} was written by another run: "
                                         f"{'; '.join(diff)}; {fix}")
            return
        try:
            stored = self.manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001
            return
        if stored is None:
            return
        diff = shape_differences(stored, target)
        if diff:
            more = f" (and {len(diff) - 2} more)" if len(diff) > 2 else ""
            raise CheckpointMismatch(
                f"{where} does not fit this model: {'; '.join(diff[:2])}{more}. It was "
                f"written with another model config (it is too old to record which "
                f"fields); {fix}")

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
        """`(step, params)`: the EMA (`use_ema`) or raw parameters of the newest
        readable checkpoint (as `restore_newest`: a corrupt newest step falls back to the
        previous one), or of `step`'s, restored alone into the structure, dtypes and
        shardings of `abstract_params`. Nothing else of the state is read: no optimizer
        has to be built to restore weights for sampling or evaluation."""
        key = "ema_params" if use_ema else "params"
        if step is None:
            return self.restore_newest(
                lambda s: self.restore_params(abstract_params, use_ema=use_ema, step=s),
                {key: abstract_params})
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

    def check_processes(self, step: int) -> None:
        """Raises `CheckpointMismatch` when `step`'s data position was saved by another
        number of processes than this run's: grain would find no file for this run's
        processes and every step would fail to restore, for a reason no step's error
        names."""
        data = f"{self.directory.rstrip('/')}/{step}/data"
        try:
            names = listdir(data)
        except OSError:
            return  # no data item (or unreadable: restoring the step reports it)
        counts = {int(m.group(1)) for m in map(_PROCESS_FILE.fullmatch, names) if m}
        here = jax.process_count()
        if counts and counts != {here}:
            saved = ", ".join(map(str, sorted(counts)))
            raise CheckpointMismatch(
                f"checkpoint step {step} in {self.directory} was saved by {saved} "
                f"process(es) and this run has {here}: each process's data position is "
                f"saved apart, so resume training with {saved} (sampling and evaluation "
                "read its weights with any number)")

    def restore_newest_readable(self, target: Any, data_iterator: Any | None = None
                                ) -> tuple[int, Any]:
        """`(step, state)` of the newest checkpoint that restores into `target` (and
        rewinds `data_iterator`), as `restore_newest`; with a data iterator, a
        checkpoint saved by another number of processes is refused first."""
        newest = self.latest_step()
        if data_iterator is not None and newest is not None:
            self.check_processes(newest)
        return self.restore_newest(lambda step: (step, self.restore(target, data_iterator,
                                                                    step=step)), target)

    def restore_newest(self, read: Callable[[int], tuple[int, T]], target: Any
                       ) -> tuple[int, T]:
        """`read(step)` of the newest step it succeeds on: the one restore path of
        every job.

        Each step is first checked against this run (`check_fits`, with `target` the
        abstract tree `read` restores): a checkpoint of another model or tokenizer is
        refused at once, naming the field. A truncated or corrupted step is not fatal: a
        warning names it and the previous one is tried. A run that trains on (not read
        only) then moves the newer unreadable steps aside (renamed
        `corrupt-<step>-<time>`, never deleted), so it can save those steps again; a
        reader leaves them. If no step restores, nothing is moved and `CheckpointError`
        lists each step's error.
        """
        errors: dict[int, str] = {}
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}: train first with "
                                    "--mode=train and the same --workdir")
        for step in steps:
            self.check_fits(step, target)
            try:
                result = read(step)
            except Exception as err:  # noqa: BLE001 - any failure to read means "unusable"
                errors[step] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                logging.warning("checkpoint step %d in %s cannot be restored (%s); trying "
                                "the previous one", step, self.directory, errors[step])
                continue
            if errors:
                if self.read_only:
                    logging.warning("restored step %d instead of the unreadable newer step(s) "
                                    "%s, which are left where they are", step, sorted(errors))
                else:
                    self._move_aside(errors, step)
            return result
        listing = "; ".join(f"step {k}: {v}" for k, v in errors.items())
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored ({listing}); move the "
            "directory away to start afresh")

    def _move_aside(self, bad_steps: Any, resumed: int) -> None:
        """Renames unreadable steps (process 0 only; the others wait for it); in a
        `gs://` workdir through tf.io.gfile (`files.move`)."""
        if jax.process_index() == 0:
            for bad in bad_steps:
                moved = f"{self.directory.rstrip('/')}/corrupt-{bad}-{int(time.time())}"
                move(f"{self.directory.rstrip('/')}/{bad}", moved)
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


def open_for_reading(workdir: str, identity: Mapping[str, Any] | None = None) -> Checkpointer:
    """The read-only checkpointer of `workdir` (comparing `identity` before restores),
    or FileNotFoundError saying what to do."""
    directory = checkpoint_dir(workdir)
    checkpointer = (Checkpointer(directory, read_only=True, identity=identity)
                    if is_remote(directory) or os.path.isdir(directory) else None)
    if checkpointer is None or checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {directory}: train first with --mode=train "
                                f"and the same --workdir")
    return checkpointer


def resume_or_start(workdir: str, loop: LoopConfig, init: Callable[[], Any] | Any, mesh: Mesh,
                    data_iterator: Any, identity: Mapping[str, Any] | None = None
                    ) -> tuple[Checkpointer, Any, int, Any]:
    """Opens `workdir/checkpoints` (keeping `loop.keep_checkpoints`, saving every
    `loop.checkpoint_every` steps, recording `identity` with each); returns
    `(checkpointer, state, first step to run - 1, state shardings)`.

    With a checkpoint, the newest is restored straight into `mesh`'s shardings (an
    abstract target: no fresh state is built first, and a run saved on another mesh
    shape is resharded on load) and `data_iterator` is rewound. Without one, `init`
    (zero-argument, returns the state pytree) runs jitted with sharded outputs; `init`
    may also be a state built on the host, which is then put on the mesh.
    """
    require_writable(workdir)
    checkpointer = Checkpointer(checkpoint_dir(workdir), keep=loop.keep_checkpoints,
                                save_every=loop.checkpoint_every, identity=identity)
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
