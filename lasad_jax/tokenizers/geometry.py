"""The shape of a tokenizer's codes, known from its config alone.

Training on pre-extracted codes needs only the vocabulary size and the code grid, not the
tokenizer's weights; this lets the trainer start (and the model be sized) without loading
a VQ decoder that only sampling needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Downsampling factor of LlamaGen's VQ-16 (256 px -> 16x16 codes).
VQ16_STRIDE = 16


@dataclasses.dataclass(frozen=True)
class CodeGeometry:
    vocab_size: int
    grid_shape: tuple[int, int]


def code_geometry(cfg: Any) -> CodeGeometry:
    """Vocabulary and grid of the tokenizer described by a `tokenizer` ConfigDict."""
    size = tuple(cfg.image_size)
    if cfg.name == "intensity":
        return CodeGeometry(int(cfg.levels), (int(size[0]), int(size[1])))
    if cfg.name == "vq16":
        if size[0] % VQ16_STRIDE or size[1] % VQ16_STRIDE:
            raise ValueError(f"tokenizer.image_size must be a multiple of {VQ16_STRIDE} for "
                             f"vq16, got {size}")
        return CodeGeometry(int(cfg.codebook_size),
                            (size[0] // VQ16_STRIDE, size[1] // VQ16_STRIDE))
    raise ValueError(f"tokenizer.name must be one of ('intensity', 'vq16'), got {cfg.name!r}")
