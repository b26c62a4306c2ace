"""Where metrics go: clu's default writer (TensorBoard event files + the log) and a
`metrics.jsonl` file, one JSON object per logged step, for scripts and plots.

clu imports TensorFlow (seconds, and a GPU build would take GPU memory), so this module
is imported only by a training loop when it starts, and through `files.tensorflow`,
which keeps TensorFlow off the GPUs first.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from lasad_jax.files import (
    exists, free_name, is_remote, move, read_bytes, tensorflow, tf_gfile, write_atomically)

tensorflow()  # before clu imports it
from clu import metric_writers  # noqa: E402


class JsonlWriter(metric_writers.MetricWriter):
    """Appends `{"step": s, name: value, ...}` lines; one line per `write_scalars` call.

    A resumed run continues the same file. Rows past `resume_step` (logged after the
    checkpoint it resumes from, by a process that then died) are dropped first, since
    the resumed run logs those steps again: the file then reads exactly as an
    uninterrupted run's would. A run starting afresh (`resume_step` 0) in a workdir whose
    file already has rows (an earlier run's, its checkpoints moved away) first renames
    that file to `metrics.jsonl.1` (or the next free number): no run's record is lost.

    In a `gs://` workdir the file is appended through tf.io.gfile, whose Cloud Storage
    writer uploads the whole file again on every flush (objects cannot be appended to):
    the bucket always holds every row logged so far.
    """

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        if resume_step == 0 and exists(path) and read_bytes(path).strip():
            kept = free_name(path)
            move(path, kept)
            logging.warning("%s holds an earlier run's metrics and this run starts at step "
                            "0: renamed to %s", path, kept)
        elif resume_step is not None and exists(path):
            _truncate_after(path, resume_step)
        self._file = (tf_gfile().GFile(path, "a") if is_remote(path)
                      else open(path, "a", encoding="utf-8"))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def write_images(self, step, images) -> None:  # images go to TensorBoard only
        pass

    def write_videos(self, step, videos) -> None:
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:
        pass

    def write_texts(self, step, texts) -> None:
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        pass

    def write_hparams(self, hparams) -> None:
        pass

    def write_summaries(self, step, values, metadata=None) -> None:
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _truncate_after(path: str, step: int) -> None:
    """Keeps the rows of steps <= `step` (and the lines that do not parse, which a crash
    mid-write can leave only at the end); replaces the file atomically."""
    text = read_bytes(path).decode("utf-8")
    lines = io.StringIO(text, newline="\n").readlines()  # split at "\n" only
    kept = []
    for line in lines:
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
        if row_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        write_atomically(path, "".join(kept).encode("utf-8"))


def create_writer(workdir: str, resume_step: int | None = None) -> metric_writers.MetricWriter:
    """TensorBoard + log + jsonl on the first process; only the log on the others."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    return metric_writers.MultiWriter([
        metric_writers.create_default_writer(workdir, asynchronous=False),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step),
    ])
