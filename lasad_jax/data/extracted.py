"""Reading codes written by `lasad_jax.data.extract`: all shards of a split as one
memory-mapped, random-access source, with the same fail-fast checks as `codes.py`."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from lasad_jax.data.codes import RANGE_CHECK_ROWS, _check_range, open_npy
from lasad_jax.files import local_copy
from lasad_jax.tokenizers.base import short

FORMAT = "lasad_jax.extracted_codes/1"


def manifest_path(out_dir: str | os.PathLike, split: str) -> pathlib.Path:
    """Where the manifest of an extracted split lives (written last, after each shard)."""
    return pathlib.Path(out_dir) / f"{split}-manifest.json"


def read_manifest(mpath: pathlib.Path) -> dict:
    """A split's manifest, or one error naming the file when it is not one (truncated,
    not JSON, of another format, lacking the fields every manifest has)."""
    try:
        manifest = json.loads(mpath.read_text())
        form = manifest.get("format")
    except (ValueError, AttributeError) as err:  # not JSON, or not a JSON object
        raise ValueError(f"{mpath} is not a manifest of extracted codes ({err}); delete it "
                         "and extract the split again") from err
    if form != FORMAT:
        raise ValueError(f"{mpath} has format {form!r}, expected {FORMAT!r}")
    missing = [key for key in ("config", "shards", "complete") if key not in manifest]
    if missing:
        raise ValueError(f"{mpath} lacks {missing}; delete it and extract the split again")
    return manifest


class ExtractedSource:
    """Random access over all shards of an extracted split, memory-mapped.

    `source[i]` is `{"views": int32 [V, h*w], "label": int32}` (the trainer draws one
    view per epoch); `rows(start, stop)` gives view 0, the plain centre crop, as the
    `{"tokens", "label"}` batches evaluation reads. Shards are opened lazily by index, so
    a million-image split costs no RAM until rows are read.
    """

    def __init__(self, codes: list[np.ndarray], labels: list[np.ndarray], num_views: int,
                 grid: tuple[int, int], tokenizer: str | None = None,
                 identity: str | None = None):
        self._codes, self._labels = codes, labels
        # A digest of the manifest's config: which extraction (`dataset_identity`).
        self.identity = identity
        self.num_views, self.grid = num_views, grid
        # The fingerprint of the tokenizer that wrote the codes (None: not recorded, an
        # extraction made before fingerprints); checkpoints trained on them record it.
        self.tokenizer = tokenizer
        self.seq_len = grid[0] * grid[1]
        self._ends = np.cumsum([len(x) for x in labels])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __repr__(self) -> str:
        return (f"ExtractedSource(num_examples={len(self)}, views={self.num_views}, "
                f"seq_len={self.seq_len}, shards={len(self._codes)})")

    def _locate(self, index: int) -> tuple[int, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        shard = int(np.searchsorted(self._ends, index, side="right"))
        return shard, index - (int(self._ends[shard - 1]) if shard else 0)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        shard, row = self._locate(index)
        views = np.asarray(self._codes[shard][row], np.int32)
        return {"views": views.reshape(self.num_views, self.seq_len),
                "label": np.int32(self._labels[shard][row])}

    def rows(self, start: int, stop: int, view: int = 0) -> dict[str, np.ndarray]:
        """Rows `[start, stop)` of one view; one read per shard touched, not per row."""
        tokens, labels = [np.zeros((0, self.seq_len), np.int32)], [np.zeros(0, np.int32)]
        index, stop = start, min(stop, len(self))
        while index < stop:
            shard, row = self._locate(index)
            n = min(stop - index, len(self._labels[shard]) - row)
            block = np.asarray(self._codes[shard][row : row + n, view], np.int32)
            tokens.append(block.reshape(n, self.seq_len))
            labels.append(np.asarray(self._labels[shard][row : row + n], np.int32))
            index += n
        return {"tokens": np.concatenate(tokens), "label": np.concatenate(labels)}


def require_one_tokenizer(train: ExtractedSource, val: ExtractedSource, codes_dir: str) -> None:
    """Refuses a validation split whose codes another tokenizer wrote than the training
    split's (each manifest records its own, and extraction refuses the mix, but two
    directories can be merged by hand): the model would be scored on tokens of a
    vocabulary it never learnt."""
    if train.tokenizer and val.tokenizer and train.tokenizer != val.tokenizer:
        raise ValueError(
            f"config.data.codes_dir={codes_dir!r} holds train codes of tokenizer "
            f"{short(train.tokenizer)} and val codes of tokenizer {short(val.tokenizer)}; "
            "validation needs the training split's tokenizer: extract both splits with one")


def load_extracted(out_dir: str | os.PathLike, split: str, *, grid_shape: tuple[int, int],
                   vocab_size: int, num_classes: int,
                   allow_incomplete: bool = False) -> ExtractedSource:
    """Opens an extracted split after checking it against the tokenizer and the model.

    Fails fast, naming the file and the fix, on a missing manifest or shard, a grid or
    vocabulary that differs from the tokenizer's, an unfinished extraction (unless
    `allow_incomplete`), labels outside [0, num_classes) (all are read: they are small),
    or codes outside [0, vocab_size) in the first shard's leading `RANGE_CHECK_ROWS` rows.

    A `gs://` directory is first copied whole into the local cache
    (`lasad_jax.files.local_copy`, once per machine): shards are memory-mapped, which
    needs local files, and every split then reads the same copy.
    """
    out_dir = local_copy(os.fspath(out_dir), "data.codes_dir")
    mpath = manifest_path(out_dir, split)
    if not mpath.is_file():
        raise FileNotFoundError(
            f"{str(mpath)!r} does not exist: no codes were extracted for split {split!r} in "
            f"{str(out_dir)!r}; run the extraction first (python -m lasad_jax.main "
            "--mode=extract, or lasad_jax.data.extract.extract_codes)")
    manifest = read_manifest(mpath)
    cfg = manifest["config"]
    if tuple(cfg["grid"]) != tuple(grid_shape):
        raise ValueError(f"{mpath} holds codes on a {tuple(cfg['grid'])} grid, but the "
                         f"tokenizer's grid_shape is {tuple(grid_shape)}; extract again with "
                         "this tokenizer")
    if cfg["vocab_size"] != vocab_size:
        raise ValueError(f"{mpath} holds codes of vocab_size {cfg['vocab_size']}, but the "
                         f"tokenizer's vocab_size is {vocab_size}; extract again with this "
                         "tokenizer")
    if not manifest["complete"] and not allow_incomplete:
        raise ValueError(f"{mpath}: extraction of {split!r} is unfinished "
                         f"({len(manifest['shards'])} shards written); re-run it to resume")
    codes, labels = [], []
    for shard in manifest["shards"]:
        for name in (shard["codes"], shard["labels"]):
            if not (pathlib.Path(out_dir) / name).is_file():
                raise FileNotFoundError(f"{mpath} lists {name}, which is missing from "
                                        f"{str(out_dir)!r}; delete the manifest and extract again")
        fix = f"delete {mpath.name} and the split's shards, and extract it again"
        c, y = (open_npy(pathlib.Path(out_dir) / shard[key], fix) for key in ("codes", "labels"))
        expected = (shard["num_images"], cfg["views"], *cfg["grid"])
        if c.shape != expected or y.shape != (shard["num_images"],):
            raise ValueError(f"{shard['codes']} / {shard['labels']} have shapes {c.shape} / "
                             f"{y.shape}, the manifest says {expected}; extract again")
        if len(y):
            codes.append(c)
            labels.append(y)
    if not labels:
        raise ValueError(f"{mpath} lists no extracted images")
    head = slice(0, RANGE_CHECK_ROWS)
    _check_range(f"codes in {out_dir}/{manifest['shards'][0]['codes']}",
                 np.asarray(codes[0][head]), vocab_size, "vocab_size")
    for y, shard in zip(labels, [s for s in manifest["shards"] if s["num_images"]]):
        lo, hi = int(np.min(y)), int(np.max(y))  # labels are small: all are checked
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels in {out_dir}/{shard['labels']} must lie in "
                             f"[0, {num_classes}) (num_classes={num_classes}), got values in "
                             f"[{lo}, {hi}]")
    recorded = cfg.get("tokenizer")
    fingerprint = recorded if isinstance(recorded, str) and recorded.startswith("sha256:") else None
    identity = "sha256:" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    return ExtractedSource(codes, labels, cfg["views"], tuple(cfg["grid"]), fingerprint, identity)
