"""The on-disk format of pre-extracted token codes, and fail-fast loading.

Large datasets (ImageNet with VQ-16) are tokenized once, offline, so the trainer never
decodes a JPEG. A split lives in one directory as two plain `.npy` files:

    {split}_codes.npy    int16 or int32, [N, h, w]   (code grid per example)
    {split}_labels.npy   int32,          [N]         (class per example)

Plain `.npy` is memory-mapped on load: millions of rows cost no RAM until they are read.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from lasad_jax.files import local_copy, save_npy

# Range checks read only this many leading rows, so opening a huge memmap stays cheap.
RANGE_CHECK_ROWS = 10_000

_EXTRACTION_HINT = "code datasets are written by the tokenizer's code extraction step"


def _check_split(split: str) -> str:
    if not isinstance(split, str) or not split or os.sep in split or "/" in split:
        raise ValueError(f"split must be a non-empty name such as 'train' or 'val', got {split!r}")
    return split


def code_paths(directory: str | os.PathLike, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    """The `(codes, labels)` file paths of `split` under `directory`."""
    directory = pathlib.Path(directory)
    split = _check_split(split)
    return directory / f"{split}_codes.npy", directory / f"{split}_labels.npy"


def write_codes(
    directory: str | os.PathLike, split: str, codes: np.ndarray, labels: np.ndarray
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes one split; codes are stored as int16 when they fit, which halves the disk.

    Returns the two paths written. The directory is created if needed.
    """
    codes, labels = np.asarray(codes), np.asarray(labels)
    if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"codes must be an integer array [N, h, w], got {codes.dtype} {codes.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array [N], got {labels.dtype} {labels.shape}")
    if len(codes) != len(labels):
        raise ValueError(
            f"codes and labels must have the same N, got {len(codes)} and {len(labels)}"
        )
    if codes.size and codes.min() < 0:
        raise ValueError(f"codes must be >= 0, got a minimum of {codes.min()}")
    small = not codes.size or codes.max() <= np.iinfo(np.int16).max
    codes_path, labels_path = code_paths(directory, split)
    codes_path.parent.mkdir(parents=True, exist_ok=True)
    save_npy(codes_path, codes.astype(np.int16 if small else np.int32))
    save_npy(labels_path, labels.astype(np.int32))
    return codes_path, labels_path


def open_npy(path: str | os.PathLike, fix: str) -> np.ndarray:
    """`path` memory-mapped; a file that is not a plain `.npy` array (truncated, pickled,
    of another format) is one error naming it and `fix`, not numpy's bare message."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        # numpy reads any unknown bytes as a pickle, then refuses it as one.
        why = "not an array of numbers" if "pickle" in str(err) else str(err)
        raise ValueError(f"{path} is not a readable .npy array ({why}); {fix}") from err


def _check_range(name: str, sample: np.ndarray, high: int, what: str) -> None:
    if sample.size:
        lo, hi = int(sample.min()), int(sample.max())
        if lo < 0 or hi >= high:
            raise ValueError(
                f"{name} must lie in [0, {high}) ({what}={high}), got values in [{lo}, {hi}] "
                f"within the first {RANGE_CHECK_ROWS} rows"
            )


def load_codes(
    directory: str | os.PathLike,
    split: str,
    *,
    grid_shape: tuple[int, int],
    vocab_size: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Memory-maps one split and checks it against the tokenizer and the model.

    Shapes, dtypes and the codes/labels length agreement are checked in full. Value
    ranges (codes in [0, vocab_size), labels in [0, num_classes)) are checked only on the
    first `RANGE_CHECK_ROWS` rows, so that opening a dataset of millions of rows does
    not read it all; a bad value further in is not caught here.

    A `gs://` directory is first copied whole into the local cache
    (`lasad_jax.files.local_copy`, once per machine), since a memory map needs a local file.
    """
    directory = pathlib.Path(local_copy(os.fspath(directory), "data.codes_dir"))
    if not directory.is_dir():
        raise FileNotFoundError(
            f"codes directory {str(directory)!r} does not exist; {_EXTRACTION_HINT}"
        )
    codes_path, labels_path = code_paths(directory, split)
    for path in (codes_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"missing {str(path)!r} for split {split!r}; {_EXTRACTION_HINT}"
            )
    codes, labels = (open_npy(path, f"write it again ({_EXTRACTION_HINT})")
                     for path in (codes_path, labels_path))
    h, w = grid_shape
    if codes.ndim != 3 or codes.shape[1:] != (h, w):
        raise ValueError(
            f"{codes_path} must hold codes of shape [N, {h}, {w}] (the tokenizer's grid_shape), "
            f"got {codes.shape}"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{codes_path} must hold integer codes, got {codes.dtype}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{labels_path} must hold integer labels [N], got {labels.dtype} {labels.shape}"
        )
    if len(codes) != len(labels):
        raise ValueError(
            f"{codes_path} has {len(codes)} rows but {labels_path} has {len(labels)}; "
            "they must have the same N"
        )
    if len(codes) == 0:
        raise ValueError(f"{codes_path} holds no examples")
    head = slice(0, RANGE_CHECK_ROWS)
    _check_range(f"codes in {codes_path}", np.asarray(codes[head]), vocab_size, "vocab_size")
    _check_range(f"labels in {labels_path}", np.asarray(labels[head]), num_classes, "num_classes")
    return codes, labels
