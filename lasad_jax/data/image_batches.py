"""Image batches for training the VQ tokenizer (pixels, not codes).

Every source yields `{"image": uint8 [H, W, 3], "label": int}`; the pipeline applies the
ADM centre crop to `image_size` and, in training, a random horizontal flip, then batches.
This is not LlamaGen's tokenizer augmentation: its vq_train uses ADM's `random_crop_arr`
before the flip, a random-resized crop (short side resized to a random length in
[S, 1.25 S], then an S x S crop at a random place), so each epoch sees other scales and
framings; here every epoch sees the same centre crop, only mirrored or not.
The embedded digits are upscaled with nearest neighbour and replicated to RGB, so the
CPU demo of the tokenizer needs no download.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import grain
import numpy as np

from lasad_jax.data.config import IMAGE_DATASETS, ImageDataConfig
from lasad_jax.data.digits import load_digits
from lasad_jax.data.images import adm_center_crop, build_image_source
from lasad_jax.data.pipeline import process_slice


class DigitImages:
    """scikit-learn's 8x8 digits as RGB images of `8 * scale` pixels."""

    def __init__(self, split: str, *, scale: int, val_fraction: float, seed: int):
        images, labels = load_digits(split, val_fraction=val_fraction, seed=seed)
        self.images = np.repeat(images.repeat(scale, axis=1).repeat(scale, axis=2), 3, axis=-1)
        self.labels = labels
        # Which images, as the other image sources say it (a checkpoint's data order
        # records it): the 8 x 8 originals and their labels, in order.
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
        self.fingerprint = "sha256:" + digest.hexdigest()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}


def build_image_dataset(data: ImageDataConfig, split: str, image_size: int) -> Any:
    """The pixel source of `data.name` ("digits", "imagefolder", "tfds") for `split`.
    Each has a `fingerprint` string naming which images it holds."""
    if data.name == "digits":
        if image_size % 8:
            raise ValueError(f"digits are 8x8: the tokenizer's image_size must be a multiple "
                             f"of 8, got {image_size}")
        return DigitImages(split, scale=image_size // 8, val_fraction=data.val_fraction,
                           seed=data.seed)
    if data.name in ("imagefolder", "tfds"):
        return build_image_source(data.name, split, image_dir=data.image_dir,
                                  tfds_data_dir=data.tfds_data_dir, manual_dir=data.manual_dir)
    raise ValueError(f"config.data.name must be one of {IMAGE_DATASETS} for tokenizer "
                     f"training, got {data.name!r}")


class _CropFlip(grain.transforms.RandomMap):
    def __init__(self, image_size: int):
        self.image_size = image_size

    def random_map(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = adm_center_crop(item["image"], self.image_size)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image)}


def image_train_iterator(source: Any, *, image_size: int, batch_size: int, seed: int,
                         process_index: int | None = None,
                         process_count: int | None = None) -> grain.DatasetIterator:
    """Shuffled, repeated, cropped and flipped batches `{"image": uint8 [B, S, S, 3]}`;
    the iterator's state goes into checkpoints like the code pipeline's.

    `batch_size` is this process's share of the global batch, so each process reads the
    disjoint slice `process_index::process_count` of `source` before shuffling
    (`data.pipeline.process_slice`, as the code pipeline does); without it every host
    would feed the same images. Both default to JAX's process index and count."""
    ds = process_slice(grain.MapDataset.source(source), source, "images", process_index,
                       process_count)
    ds = (ds.shuffle(seed=seed).repeat()
          .random_map(_CropFlip(image_size), seed=seed)
          .batch(batch_size, drop_remainder=True))
    return iter(ds.to_iter_dataset())


def uniform_subset(n: int, k: int, seed: int) -> np.ndarray:
    """`k` of the indices `0..n-1` (all if `k >= n`), drawn uniformly without replacement
    from `seed` and sorted, so that reading them stays sequential. Not a prefix: an image
    folder is ordered by class, so its first images cover only the first classes."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def image_eval_batches(source: Any, *, image_size: int, batch_size: int,
                       limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass in dataset order over `limit` images (a uniform subset, seed 0, the same
    at every evaluation; all when None), centre-cropped, no flip; the last batch is
    padded and carries `mask`."""
    chosen = uniform_subset(len(source), len(source) if limit is None else limit, seed=0)
    n = len(chosen)
    for start in range(0, n, batch_size):
        idx = [int(i) for i in chosen[start:start + batch_size]]
        images = np.stack([adm_center_crop(source[i]["image"], image_size) for i in idx])
        mask = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            pad = batch_size - len(idx)
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.uint8)])
            mask[len(idx):] = 0.0
        yield {"image": images, "mask": mask}
