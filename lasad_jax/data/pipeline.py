"""From token arrays to batches: a grain source, a resumable train stream, eval passes.

Every dataset, whether images tokenized on the fly (digits), a single code file ("codes")
or augmented codes extracted offline ("extracted", several views per image), yields the
same batches: token rows in raster order plus a label. The model, trainer and evaluator
therefore never branch on the dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from lasad_jax.data.codes import load_codes
from lasad_jax.data.config import EMBEDDED, TOKEN_DATASETS, DataConfig, embedded_image_shape
from lasad_jax.data.digits import load_digits
from lasad_jax.data.extracted import ExtractedSource, load_extracted
from lasad_jax.data.shapes import load_shapes
from lasad_jax.tokenizers import Tokenizer
from lasad_jax.tokenizers.geometry import CodeGeometry

Batch = dict[str, np.ndarray]


class TokenSource:
    """Random access over `(tokens, label)` pairs, as grain's `MapDataset.source` wants.

    `tokens` may be a code grid `[N, h, w]` or already flat `[N, L]`, and may be a
    read-only memmap: rows are read, flattened in raster order and cast to int32 only
    when asked for, so a large dataset stays on disk.
    """

    def __init__(self, tokens: np.ndarray, labels: np.ndarray):
        tokens_shape, labels_shape = getattr(tokens, "shape", None), getattr(labels, "shape", None)
        if tokens_shape is None or len(tokens_shape) not in (2, 3):
            raise ValueError(f"tokens must be an array [N, h, w] or [N, L], got {tokens_shape}")
        if labels_shape is None or len(labels_shape) != 1:
            raise ValueError(f"labels must be an array [N], got shape {labels_shape}")
        if len(tokens) != len(labels):
            raise ValueError(
                f"tokens and labels must have the same N, got {len(tokens)} and {len(labels)}"
            )
        self.tokens = tokens
        self.labels = labels
        self.seq_len = int(np.prod(tokens.shape[1:]))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        # grain logs the source's repr; never let it print the arrays.
        return f"TokenSource(num_examples={len(self)}, seq_len={self.seq_len})"

    def __getitem__(self, index: int) -> Batch:
        return {
            "tokens": np.asarray(self.tokens[index], np.int32).reshape(self.seq_len),
            "label": np.int32(self.labels[index]),
        }

    def rows(self, start: int, stop: int) -> Batch:
        """A contiguous slice as a batch; one read per slice, not one per row."""
        tokens = np.asarray(self.tokens[start:stop], np.int32)
        return {
            "tokens": tokens.reshape(len(tokens), self.seq_len),
            "label": np.asarray(self.labels[start:stop], np.int32),
        }


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_nonempty(source: TokenSource | ExtractedSource) -> None:
    if len(source) == 0:
        raise ValueError("source holds no examples")


def _pick_view(element: Batch, rng: np.random.Generator) -> Batch:
    """One uniformly drawn augmented view of an extracted image, as a token row."""
    views = element["views"]
    return {"tokens": views[rng.integers(len(views))], "label": element["label"]}


def train_iterator(
    source: TokenSource | ExtractedSource,
    *,
    batch_size: int,
    seed: int,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
    """An endless stream of shuffled batches `{"tokens": int32 [B, L], "label": int32 [B]}`.

    Each epoch is a fresh seeded permutation and batches run across epoch boundaries, so
    no example is dropped for good. With several JAX processes, each reads the disjoint
    slice `process_index::process_count` (taken before shuffling) and `batch_size` is
    this process's share. For an `ExtractedSource` one view per image is drawn after
    `repeat()`, from `seed` and the position in the stream, so each epoch sees other
    views yet a seed always gives the same stream. The iterator's `get_state()` /
    `set_state()` record the position: a checkpoint restored into a new iterator built
    with the same arguments continues with exactly the batches the old one would have given.
    """
    batch_size = _positive_int("batch_size", batch_size)
    _check_nonempty(source)
    dataset = process_slice(grain.MapDataset.source(source), source, "examples")
    dataset = dataset.shuffle(seed=seed).repeat()
    if isinstance(source, ExtractedSource):
        dataset = dataset.random_map(_pick_view, seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True).to_iter_dataset(read_options)
    return iter(dataset)


def process_slice(dataset: grain.MapDataset, source: Any, what: str,
                  index: int | None = None, count: int | None = None) -> grain.MapDataset:
    """This process's disjoint slice `index::count` of `dataset` (default: JAX's process
    index and count), taken before any shuffle so the processes never share an example;
    raises naming `what` the slice lacks if it is empty."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, process_count={count}), got {index}")
    if count > 1:
        dataset = dataset[index::count]
        if len(dataset) == 0:
            raise ValueError(f"process {index} of {count} gets no {what} from {source!r}; "
                             "use fewer processes or more data")
    return dataset


def eval_batches(source: TokenSource | ExtractedSource, *, batch_size: int) -> Iterator[Batch]:
    """One ordered pass in batches of a fixed size, for jitted evaluation.

    The last batch is padded with zero tokens and label 0 to `batch_size`, so every call
    to the jitted step sees one shape. Each batch carries `mask` (float32 [B]: 1 for a
    real example, 0 for padding); weighting by it counts each example exactly once.
    An `ExtractedSource` is evaluated on view 0, the plain centre crop.
    """
    batch_size = _positive_int("batch_size", batch_size)
    _check_nonempty(source)
    for start in range(0, len(source), batch_size):
        batch = source.rows(start, start + batch_size)
        real = len(batch["label"])
        pad = batch_size - real
        batch["tokens"] = np.pad(batch["tokens"], ((0, pad), (0, 0)))
        batch["label"] = np.pad(batch["label"], (0, pad))
        batch["mask"] = (np.arange(batch_size) < real).astype(np.float32)
        yield batch


# Token rows a dataset's identity reads beside all its labels: enough to tell two
# datasets apart, cheap for a million-row memmap.
IDENTITY_ROWS = 256


def dataset_identity(source: TokenSource | ExtractedSource) -> str:
    """Which training examples a checkpoint's data position counts through
    (`training.checkpoint.data_order`): for extracted codes, a digest of the manifest's
    config (the images' and the tokenizer's fingerprints, the views, the sizes), so the
    same extraction re-run or moved keeps it; for the others, a digest of every label and
    the first `IDENTITY_ROWS` token rows."""
    if isinstance(source, ExtractedSource):
        return source.identity
    digest = hashlib.sha256(np.ascontiguousarray(source.labels, np.int32).tobytes())
    head = np.asarray(source.tokens[:IDENTITY_ROWS], np.int32)
    digest.update(np.ascontiguousarray(head).tobytes())
    return "sha256:" + digest.hexdigest()


def load_embedded(data: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [N, H, W, 1], labels)` of `split` of an embedded dataset."""
    if data.name == "digits":
        return load_digits(split, val_fraction=data.val_fraction, seed=data.seed)
    return load_shapes(split, num_train=data.num_train, num_val=data.num_val, size=data.size,
                       seed=data.seed)


def build_source(data: DataConfig, split: str,
                 tokenizer: Tokenizer | CodeGeometry) -> TokenSource | ExtractedSource:
    """The source for `split` of the dataset named by `data.name`.

    Image datasets are tokenized here with `tokenizer.encode`; code datasets are checked
    against the tokenizer's grid and vocabulary (then `tokenizer` may be just its
    `CodeGeometry`), because codes written by a different tokenizer would otherwise
    train silently on garbage. "extracted" gives an `ExtractedSource` over the shards in
    `codes_dir` (training draws a view per epoch, evaluation reads view 0).
    """
    if data.name not in TOKEN_DATASETS:
        raise ValueError(f"config.data.name must be one of {', '.join(TOKEN_DATASETS)}; got "
                         f"{data.name!r}")
    if data.name in EMBEDDED:
        images, labels = load_embedded(data, split)
        if tuple(tokenizer.image_shape) != images.shape[1:]:
            raise ValueError(f"the {data.name} dataset has images of shape {images.shape[1:]}, "
                             f"but the tokenizer expects {tuple(tokenizer.image_shape)}; set "
                             f"config.tokenizer.image_size to {embedded_image_shape(data)[:2]} "
                             "and channels=1")
        return TokenSource(tokenizer.encode(images), labels)
    if not data.codes_dir:
        files = ("{split}-manifest.json and its shards" if data.name == "extracted"
                 else "{split}_codes.npy and {split}_labels.npy")
        raise ValueError(f"config.data.codes_dir must point at a directory of extracted codes "
                         f"({files}), got {data.codes_dir!r}")
    load = load_extracted if data.name == "extracted" else load_codes
    loaded = load(data.codes_dir, split, grid_shape=tuple(tokenizer.grid_shape),
                  vocab_size=tokenizer.vocab_size, num_classes=data.num_classes)
    return loaded if data.name == "extracted" else TokenSource(*loaded)
