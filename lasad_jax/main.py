"""Command line: `python -m lasad_jax.main --config=CONFIG --workdir=DIR [--mode=...]`.

Modes:
* `train` (the default): trains, resuming from DIR's newest checkpoint;
* `sample`: restores DIR's newest checkpoint, writes `samples-step<step>-<digest>.png`
  and `.npz` (named by the checkpoint step and the sampling settings);
* `extract`: encodes the config's image dataset into token codes under
  `config.data.codes_dir`, once, resumably (DIR is unused);
* `reference_stats`: Inception statistics of the training images, for FID;
* `evaluate`: generates `config.eval.num_samples` images from DIR's newest checkpoint
  (resumably) and reports FID, sFID, IS, precision and recall (ADM protocol).

Any config field can be overridden: `--config.num_steps=100 --config.model.mixer=softmax`
(docs/configuration.md). This module only parses the flags, reads the config file and
its overrides (`lasad_jax.config.load_config_file`, `apply_overrides`), starts JAX on
every host, reads the config into its typed form (`lasad_jax.config.parse`, which
reports every problem at once) and hands it to the job of the mode (`lasad_jax.jobs`).

An expected failure (a bad flag, config or file, a checkpoint of another run, a full or
read-only disk, divergence) ends with exit status 1 and one `error: ...` line naming the
cause and the fix; `LASAD_TRACEBACK=1` shows the traceback instead. `cli(argv)` is the
whole command in this process (what the tests call); `python -m` adds absl's start-up.
"""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
from absl import app, flags, logging

# Importing these touches no device, so `jax.distributed.initialize` in `run` still
# comes before anything JAX computes.
from lasad_jax.config import (
    MODES,
    apply_overrides,
    load_config_file,
    parse,
)
from lasad_jax.files import (
    NO_SPACE,
    NOT_WRITABLE,
    OutputError,
    RemoteError,
    as_output_error,
    missing_directories,
    remove_if_empty,
)
from lasad_jax.jobs import run_job
from lasad_jax.training.checkpoint import CheckpointError
from lasad_jax.validation import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Path to a config file (configs/*.py); set its fields "
                    "with --config.FIELD=VALUE (docs/configuration.md).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", MODES, "What to run.")

REQUIRED = {"config": "the config file, e.g. --config=configs/demo.py",
            "workdir": "the directory of checkpoints, metrics and samples"}
_OVERRIDE = re.compile(r"^--?(no)?config\.([\w.]+)(?:=(.*))?$", re.S)


class _QuietLibraries(pylogging.Filter):
    """Drops INFO chatter of the checkpoint and data libraries (Orbax logs ~30 lines per
    save), and Orbax's warnings that a reader's checkpoints are read-only (they are meant
    to be); their other warnings and errors still show."""

    NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}tensorflow{os.sep}")
    EXPECTED = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in self.NOISY)
        if noisy and str(record.msg).startswith(self.EXPECTED):
            return False
        return record.levelno >= pylogging.WARNING or not noisy


def _is_flag(arg: str) -> bool:
    """Whether an argument after a bare `--config.PATH` is the next flag rather than its
    value: `-x...`, `--x...` or `--`; so `-1`, `-0.5` and `-1e-3` are values."""
    return arg == "--" or bool(re.match(r"^--?[A-Za-z]", arg))


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """`(absl's arguments, [(path, text)])`: the `--config.PATH=TEXT` overrides are read
    here, not by absl (`--noconfig.PATH` is `(PATH, "false")`; `--config.PATH TEXT` takes
    the next argument as its value unless it looks like a flag, so a negative number
    such as `--config.seed -1` is a value)."""
    rest, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        match = _OVERRIDE.match(args[i])
        if not match:
            rest.append(args[i])
        elif match.group(1):
            overrides.append((match.group(2), "false"))
        elif match.group(3) is not None:
            overrides.append((match.group(2), match.group(3)))
        elif i + 1 < len(args) and not _is_flag(args[i + 1]):
            overrides.append((match.group(2), args[i + 1]))
            i += 1
        else:
            overrides.append((match.group(2), None))
        i += 1
    return rest, overrides


def parse_flags(argv: Sequence[str]) -> list[str]:
    """Parses absl's flags (every call starts from the defaults); returns the program
    name, any stray positional arguments and the overrides, normalised to
    `--config.PATH=TEXT`, for `main`. A bad flag raises `flags.Error` (one line)."""
    rest, overrides = split_overrides(argv)
    FLAGS.unparse_flags()  # a second call in one process must not inherit the first's
    positional = FLAGS(rest)
    missing = [name for name in REQUIRED if not getattr(FLAGS, name)]
    if missing:
        raise flags.Error("; ".join(f"--{name} is required: {REQUIRED[name]}"
                                    for name in missing))
    return positional + [f"--config.{path}" + ("" if text is None else f"={text}")
                         for path, text in overrides]


def main(argv: Sequence[str]) -> int:
    """What `app.run` calls once the flags are parsed: the config, then the job.
    Returns the exit status: 0, or 1 after printing one `error:` line."""
    try:
        positional, overrides = split_overrides(argv[1:])
        if positional:
            raise ConfigError([f"unexpected arguments {positional}: flags are written "
                               "--name=value (see --helpshort)"])
        config = load_config_file(FLAGS.config)
        apply_overrides(config, overrides)
        run(config, FLAGS.mode, FLAGS.workdir)
    except Exception as err:  # noqa: BLE001 - sorted into expected failures and bugs
        message = user_message(err)
        if message is None or os.environ.get("LASAD_TRACEBACK") == "1":
            raise  # a bug: the traceback is what helps
        return fail(message)
    return 0


def cli(argv: Sequence[str]) -> int:
    """The whole command line in this process, absl's start-up aside: flags, config,
    job. Returns the exit status (an expected failure prints one `error:` line)."""
    try:
        args = parse_flags(argv)
    except flags.Error as err:
        if os.environ.get("LASAD_TRACEBACK") == "1":
            raise
        return fail(str(err))
    return main(args)


def fail(message: str) -> int:
    """Prints the error line (a multi-problem config keeps its list below it)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def user_message(err: BaseException) -> str | None:
    """The message of an expected failure, written for the user (the field, the file,
    what to do); None for anything else, which is a bug and keeps its traceback."""
    disk = _disk_error(err)
    if disk is not None:
        return disk
    if isinstance(err, ConfigError):
        if err.header and len(err.problems) == 1:
            return f"{err.header}: {err.problems[0]}"
        return str(err)
    if isinstance(err, OutputError):
        return err.strerror
    if isinstance(err, RemoteError):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return (f"{err.strerror}: {err.filename}" if err.filename and err.strerror
                else str(err))
    if isinstance(err, (ValueError, FloatingPointError, CheckpointError)):
        return str(err)
    return None


def _disk_error(err: BaseException) -> str | None:
    """A full or unwritable disk anywhere in the error's chain (also inside Orbax's and
    TensorStore's errors, which carry only the text), as one message naming the path."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OutputError):
            return err.strerror
        if isinstance(err, OSError) and err.errno in NO_SPACE + NOT_WRITABLE:
            return as_output_error(err, err.filename or "the output").strerror
        text = str(err)
        for needle, reason in (("No space left on device", "no space left on device"),
                               ("Read-only file system", "read-only file system")):
            if needle in text:
                path = re.search(r'"(/[^"]+)"', text)
                where = path.group(1) if path else "an output"
                return (f"cannot write {where}: {reason}; free space or make it writable, "
                        "or use a --workdir on another disk")
        err = err.__cause__ or err.__context__
    return None


def start_processes() -> None:
    """`jax.distributed.initialize()`: coordinator address, process count and index come
    from the TPU pod's or the SLURM job's environment (on one host nothing calls this,
    and JAX runs as a single process). Outside both, JAX's own message names nothing the
    user set."""
    try:
        jax.distributed.initialize()
    except ValueError as err:
        raise ValueError(f"LASAD_MULTIHOST=1 asks for a multi-host start, but JAX found no "
                         f"TPU pod or SLURM job to take the processes from ({err}); start "
                         "through launch/tpu/run.sh or launch/gpu/slurm.sh, or unset "
                         "LASAD_MULTIHOST to run on this host alone") from err


def run(config: Any, mode: str, workdir: str) -> None:
    """Everything after flag parsing: multi-host start-up, the typed config, the job."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    if os.environ.get("LASAD_MULTIHOST") == "1":  # set by launch/ for TPU pods and SLURM
        start_processes()
    run_config = parse(config, mode)  # every problem at once, before anything is built
    logging.info("JAX %s on %s; mode %s; workdir %s", jax.__version__, jax.devices(),
                 mode, workdir)
    made = missing_directories(workdir)  # the job makes them before it checks its data
    try:
        run_job(run_config, mode, workdir)
    except BaseException:
        remove_if_empty(made)
        raise


def _parse_flags_or_exit(argv: Sequence[str]) -> list[str]:
    """`app.run`'s flag parser: a bad flag is one `error:` line and exit status 1."""
    try:
        return parse_flags(argv)
    except flags.Error as err:
        if os.environ.get("LASAD_TRACEBACK") == "1":
            raise
        sys.exit(fail(str(err)))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags_or_exit)
