"""The shape of a tokenizer's codes, known from its config alone.

Training on pre-extracted codes needs only the vocabulary size and the code grid, not the
tokenizer's weights; this lets the trainer start (and the model be sized) without loading
a VQ decoder that only sampling needs. For a VQ tokenizer whose weights are present, the
factor and codebook size are read from its `vq_config.json`, so a tokenizer trained here
with another depth or codebook sizes the generator correctly.
"""

from __future__ import annotations

import dataclasses
import json

from lasad_jax.files import RemoteError, exists, read_bytes
from lasad_jax.tokenizers.config import TokenizerConfig
from lasad_jax.tokenizers.vq.weights import CONFIG_FILE

# Downsampling factor of LlamaGen's VQ-16 (256 px -> 16x16 codes).
VQ16_STRIDE = 16


@dataclasses.dataclass(frozen=True)
class CodeGeometry:
    vocab_size: int
    grid_shape: tuple[int, int]


def _vq_checkpoint_geometry(checkpoint: str) -> tuple[int | None, int | None]:
    """(downsampling factor, codebook size) recorded with a converted or trained VQ
    tokenizer, read from its small JSON file; (None, None) when there is none.

    A `gs://` checkpoint's JSON is read where it is: validating a run must not copy
    the weights, which only a job that decodes or encodes needs (`VQ16Tokenizer`)."""
    if not checkpoint:
        return None, None
    path = f"{checkpoint.rstrip('/')}/{CONFIG_FILE}"
    try:
        if not exists(path):
            return None, None
        vq = json.loads(read_bytes(path))["config"]
    except RemoteError as err:
        raise ValueError(f"tokenizer.checkpoint {err}") from err
    return 2 ** (len(vq["ch_mult"]) - 1), int(vq["codebook_size"])


def code_geometry(tokenizer: TokenizerConfig) -> CodeGeometry:
    """Vocabulary and grid of the tokenizer `tokenizer` describes."""
    size = tokenizer.image_size
    if tokenizer.name == "intensity":
        return CodeGeometry(tokenizer.levels, (size[0], size[1]))
    stride, vocab = _vq_checkpoint_geometry(tokenizer.checkpoint)
    if stride is None:  # no weights yet: LlamaGen's VQ-16 and the configured codebook
        stride, vocab = VQ16_STRIDE, tokenizer.codebook_size
    elif vocab != tokenizer.codebook_size:  # refused now, not when the job builds it
        raise ValueError(f"tokenizer.codebook_size={tokenizer.codebook_size}, but the "
                         f"weights in {tokenizer.checkpoint!r} have {vocab} codes; set "
                         f"tokenizer.codebook_size={vocab}")
    if size[0] % stride or size[1] % stride:
        raise ValueError(f"tokenizer.image_size must be a multiple of {stride} (the "
                         f"tokenizer's downsampling factor), got {size}")
    return CodeGeometry(vocab, (size[0] // stride, size[1] // stride))
