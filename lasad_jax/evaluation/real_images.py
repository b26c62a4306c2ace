"""The real images a reference is made of (`--mode=reference_stats`), as the model's
samples will look."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lasad_jax.data.config import EMBEDDED, DataConfig
from lasad_jax.data.image_batches import uniform_subset
from lasad_jax.data.images import adm_center_crop, build_image_source
from lasad_jax.data.pipeline import load_embedded
from lasad_jax.evaluation.resize import resize_bicubic, scored_size
from lasad_jax.tokenizers import Tokenizer, TokenizerConfig, build_tokenizer

# The seed of `reference_subset`. Recorded with the statistics (`jobs.reference_stats`):
# another seed, or the first-N rule of earlier versions, picks other images.
SUBSET_SEED = 0


def dataset_images(data: DataConfig, tokenizer: TokenizerConfig, split: str,
                   limit: int, *, built: Tokenizer | None = None,
                   image_size: int = 0) -> Iterator[np.ndarray]:
    """uint8 RGB batches `[B, H, W, 3]` of `split` as the samples will be scored: at
    the generator's image size, or resized to `image_size` when that is set (as
    `eval.image_size` resizes the samples). `limit` > 0 keeps a uniformly random subset
    of that many images (`reference_subset`), 0 all of them.

    The embedded digits and shapes go through the tokenizer (`built`, or one built from
    `tokenizer`; so the reference holds the grey levels the model can draw), then the
    samples' resize. Image datasets get the ADM centre crop, straight to the scored size
    as ADM's reference batch was made; it is square, so without `image_size` the
    tokenizer's `image_size` must be square too (else the reference images would have
    another shape than the samples). Checked at the call, before any image is read."""
    size = scored_size(image_size, tuple(tokenizer.image_size))
    if data.name in EMBEDDED:
        return _embedded_images(data, tokenizer, split, limit, built, image_size)
    if size[0] != size[1]:
        raise ValueError(f"tokenizer.image_size must be square (height == width) for "
                         f"reference images of an image dataset (the ADM centre crop is "
                         f"square), got {tuple(tokenizer.image_size)}")
    return _cropped_images(data, size[0], split, limit)


def reference_subset(total: int, limit: int) -> np.ndarray:
    """The indices of a reference's images among `total`: all for `limit` 0, else a
    uniform random `limit` of them (seed `SUBSET_SEED`), sorted. A prefix would not do:
    image folders are ordered by class, so the first images cover the first classes."""
    return uniform_subset(total, limit or total, SUBSET_SEED)


def _embedded_images(data: DataConfig, tokenizer: TokenizerConfig, split: str, limit: int,
                     built: Tokenizer | None, image_size: int) -> Iterator[np.ndarray]:
    tok = built if built is not None else build_tokenizer(tokenizer)
    images = load_embedded(data, split)[0]
    images = tok.decode(tok.encode(images[reference_subset(len(images), limit)]))
    images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    yield resize_bicubic(images, image_size) if image_size else images


def _cropped_images(data: DataConfig, size: int, split: str,
                    limit: int) -> Iterator[np.ndarray]:
    source = build_image_source(data.image_source, split, image_dir=data.image_dir,
                                tfds_data_dir=data.tfds_data_dir, manual_dir=data.manual_dir)
    batch = []
    indices = reference_subset(len(source), limit)
    for i, index in enumerate(indices):
        batch.append(adm_center_crop(source[int(index)]["image"], size))
        if len(batch) == 256 or i == len(indices) - 1:
            yield np.stack(batch)
            batch = []
