"""Where metrics go: clu's default writer (TensorBoard event files + the log) and a
`metrics.jsonl` file, one JSON object per logged step, for scripts and plots."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
    """Appends `{"step": s, name: value, ...}` lines; one line per `write_scalars` call.

    The file is opened in append mode so a resumed run continues the same file; steps
    logged before a crash and replayed after the resume appear twice (the later line
    wins for a reader that keys by step).
    """

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

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


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + log + jsonl on the first process; only the log on the others."""
    if jax.process_index() > 0:
        return metric_writers.create_default_writer(workdir, just_logging=True)
    return metric_writers.MultiWriter([
        metric_writers.create_default_writer(workdir, asynchronous=False),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
    ])


def check_finite(step: int, values: dict[str, float]) -> None:
    """Raises FloatingPointError, naming the values, before a broken state can be saved."""
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite training values at step {step}: {bad}. The last good checkpoint is "
            "kept; lower optimizer.lr or check the data.")
