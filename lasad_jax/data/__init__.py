"""Datasets as token sources: the embedded digits, extracted code files, and batching."""

from __future__ import annotations

from lasad_jax.data.codes import RANGE_CHECK_ROWS, code_paths, load_codes, write_codes
from lasad_jax.data.config import TOKEN_DATASETS, DataConfig, ImageDataConfig
from lasad_jax.data.digits import load_digits
from lasad_jax.data.pipeline import TokenSource, build_source, eval_batches, train_iterator

__all__ = [
    "RANGE_CHECK_ROWS",
    "TOKEN_DATASETS",
    "DataConfig",
    "ImageDataConfig",
    "TokenSource",
    "build_source",
    "code_paths",
    "eval_batches",
    "load_codes",
    "load_digits",
    "train_iterator",
    "write_codes",
]
