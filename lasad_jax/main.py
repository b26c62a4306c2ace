"""Command line: `python -m lasad_jax.main --config=CONFIG --workdir=DIR [--mode=...]`.

Modes:
* `train` (the default): trains, resuming from DIR's newest checkpoint;
* `sample`: restores DIR's newest checkpoint, writes `samples.png` and `samples.npz`;
* `extract`: encodes the config's image dataset into token codes under
  `config.data.codes_dir`, once, resumably (DIR is unused);
* `reference_stats`: Inception statistics of the training images, for FID;
* `evaluate`: generates `config.eval.num_samples` images from DIR's newest checkpoint
  (resumably) and reports FID, sFID, IS, precision and recall (ADM protocol).

Any config field can be overridden: `--config.num_steps=100 --config.model.mixer=softmax`
(docs/configuration.md). This module only parses the flags, starts JAX on every host,
reads the config into its typed form (`lasad_jax.config.parse`, which reports every
problem at once) and hands it to the job of the mode (`lasad_jax.jobs`).
"""

from __future__ import annotations

import logging as pylogging
import os
import sys
from typing import Any

# TensorFlow is imported by clu only to write TensorBoard files: keep it quiet and off
# any accelerator, which belongs to JAX.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Importing these touches no device, so `jax.distributed.initialize` in `run` still
# comes before anything JAX computes.
from lasad_jax.config import MODES, parse  # noqa: E402
from lasad_jax.jobs import run_job  # noqa: E402
from lasad_jax.training.checkpoint import CheckpointError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", MODES, "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def _hide_accelerators_from_tensorflow() -> None:
    try:
        import tensorflow as tf
    except ImportError:
        return
    tf.config.set_visible_devices([], "GPU")


class _QuietLibraries(pylogging.Filter):
    """Drops INFO chatter of the checkpoint and data libraries (Orbax logs ~30 lines per
    save); their warnings and errors still show."""

    NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}tensorflow{os.sep}")

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or not any(
            part in record.pathname for part in self.NOISY)


# Errors whose messages are written for the user (the field, the file, what to do).
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, CheckpointError)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run(FLAGS.config, FLAGS.mode, FLAGS.workdir)
    except Exception as err:
        # Bad configs, missing files, divergence and unusable checkpoints raise errors
        # whose messages are written for the user (the field, the file, what to do); a
        # traceback would bury them. Anything else is a bug and keeps its traceback, as
        # does everything with LASAD_TRACEBACK=1.
        if not isinstance(err, USER_ERRORS) or os.environ.get("LASAD_TRACEBACK") == "1":
            raise
        logging.error("%s: %s", type(err).__name__, err)
        sys.exit(f"error: {err}\n(set LASAD_TRACEBACK=1 for the traceback)")


def run(config: Any, mode: str, workdir: str) -> None:
    """Everything after flag parsing: multi-host start-up, the typed config, the job."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
    _hide_accelerators_from_tensorflow()
    if os.environ.get("LASAD_MULTIHOST") == "1":  # set by launch/ for TPU pods and SLURM
        # Coordinator address, process count and index come from the TPU or SLURM
        # environment; on one host this is skipped and JAX runs as a single process.
        jax.distributed.initialize()
    run_config = parse(config, mode)  # every problem at once, before anything is built
    logging.info("JAX %s on %s; mode %s; workdir %s", jax.__version__, jax.devices(),
                 mode, workdir)
    run_job(run_config, mode, workdir)


if __name__ == "__main__":
    app.run(main)
