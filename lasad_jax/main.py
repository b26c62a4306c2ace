"""Command line: `python -m lasad_jax.main --config=CONFIG --workdir=DIR [--mode=...]`.

Modes:
* `train` (the default): trains, resuming from DIR's newest checkpoint;
* `sample`: restores DIR's newest checkpoint, writes `samples.png` and `samples.npz`;
* `extract`: encodes the config's image dataset into token codes under
  `config.data.codes_dir`, once, resumably (DIR is unused);
* `reference_stats`: Inception statistics of the training images, for FID;
* `evaluate`: generates `config.eval.num_samples` images from DIR's newest checkpoint
  (resumably) and reports FID, sFID, IS, precision and recall (ADM protocol).

Any config field can be overridden: `--config.num_steps=100 --config.model.mixer=softmax`.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys
from typing import Any

# TensorFlow is imported by clu only to write TensorBoard files: keep it quiet and off
# any accelerator, which belongs to JAX.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

MODES = ("train", "sample", "extract", "evaluate", "reference_stats")

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


def _user_errors() -> tuple[type[Exception], ...]:
    from lasad_jax.training.checkpoint import CheckpointError

    return (ValueError, FileNotFoundError, FloatingPointError, CheckpointError)


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
        if not isinstance(err, _user_errors()) or os.environ.get("LASAD_TRACEBACK") == "1":
            raise
        logging.error("%s: %s", type(err).__name__, err)
        sys.exit(f"error: {err}\n(set LASAD_TRACEBACK=1 for the traceback)")


def run(config: Any, mode: str, workdir: str) -> None:
    """Everything after flag parsing: multi-host start-up, checks, then the mode."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
    _hide_accelerators_from_tensorflow()
    import jax

    from lasad_jax.config_checks import check_config

    if os.environ.get("LASAD_MULTIHOST") == "1":  # set by launch/ for TPU pods and SLURM
        # Coordinator address, process count and index come from the TPU or SLURM
        # environment; on one host this is skipped and JAX runs as a single process.
        jax.distributed.initialize()
    check_config(config, mode)
    logging.info("JAX %s on %s; mode %s; workdir %s", jax.__version__, jax.devices(),
                 mode, workdir)
    if mode == "train" and config.get("task", "generator") == "tokenizer":
        from lasad_jax.training.vq.loop import train_tokenizer

        train_tokenizer(config, workdir)
    elif mode == "train":
        from lasad_jax.training.loop import train_and_evaluate

        train_and_evaluate(config, workdir)
    elif mode == "extract":
        from lasad_jax.data.extract import run_extraction

        run_extraction(config)
    elif mode == "reference_stats":
        from lasad_jax.evaluation.job import run_reference_stats

        run_reference_stats(config, workdir)
    elif mode == "evaluate":
        from lasad_jax.evaluation.job import run_evaluation

        run_evaluation(config, workdir)
    else:
        from lasad_jax.sampling.job import run_sampling

        paths = run_sampling(config, workdir)
        logging.info("wrote %s", ", ".join(paths.values()))


if __name__ == "__main__":
    app.run(main)
