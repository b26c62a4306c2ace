"""The real images a reference is made of (`--mode=reference_stats`), as the model's
samples will look."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lasad_jax.data.config import EMBEDDED, DataConfig
from lasad_jax.data.images import adm_center_crop, build_image_source
from lasad_jax.data.pipeline import load_embedded
from lasad_jax.tokenizers import Tokenizer, TokenizerConfig, build_tokenizer


def dataset_images(data: DataConfig, tokenizer: TokenizerConfig, split: str,
                   limit: int, *, built: Tokenizer | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB batches `[B, H, W, 3]` of `split` (at most `limit` images; 0: all) at
    the generator's image size, as the samples will look: the embedded digits and
    shapes go through the tokenizer (`built`, or one built from `tokenizer`; so the
    reference holds the grey levels the model can draw); image datasets get the ADM
    centre crop, which is square, so their tokenizer's `image_size` must be too (else
    the reference images would have another shape than the samples). Checked at the
    call, before any image is read."""
    if data.name in EMBEDDED:
        return _embedded_images(data, tokenizer, split, limit, built)
    height, width = tokenizer.image_size
    if height != width:
        raise ValueError(f"tokenizer.image_size must be square (height == width) for "
                         f"reference images of an image dataset (the ADM centre crop is "
                         f"square), got {tuple(tokenizer.image_size)}")
    return _cropped_images(data, height, split, limit)


def _embedded_images(data: DataConfig, tokenizer: TokenizerConfig, split: str, limit: int,
                     built: Tokenizer | None) -> Iterator[np.ndarray]:
    tok = built if built is not None else build_tokenizer(tokenizer)
    images = load_embedded(data, split)[0]
    images = tok.decode(tok.encode(images[:limit or None]))
    yield np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _cropped_images(data: DataConfig, size: int, split: str,
                    limit: int) -> Iterator[np.ndarray]:
    source = build_image_source(data.image_source, split, image_dir=data.image_dir,
                                tfds_data_dir=data.tfds_data_dir, manual_dir=data.manual_dir)
    n = len(source) if not limit else min(limit, len(source))
    batch = []
    for i in range(n):
        batch.append(adm_center_crop(source[i]["image"], size))
        if len(batch) == 256 or i == n - 1:
            yield np.stack(batch)
            batch = []
