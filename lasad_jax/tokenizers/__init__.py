"""Tokenizers: images <-> integer code grids, and the factory that builds one from its
config block."""

from __future__ import annotations

from lasad_jax.tokenizers.base import Tokenizer
from lasad_jax.tokenizers.config import TOKENIZERS, TokenizerConfig
from lasad_jax.tokenizers.intensity import IntensityTokenizer
from lasad_jax.tokenizers.vq16 import VQ16Tokenizer
from lasad_jax.tokenizers.vq.weights import CONVERT_COMMAND

__all__ = ["TOKENIZERS", "IntensityTokenizer", "Tokenizer", "TokenizerConfig", "VQ16Tokenizer",
           "build_tokenizer"]


def build_tokenizer(config: TokenizerConfig) -> Tokenizer:
    """The tokenizer `config.name` names.

    The factory is the one place that knows the tokenizer names, so configs, the trainer
    and the sampler can switch tokenizers without importing a concrete class.
    """
    if config.name == "intensity":
        return IntensityTokenizer(levels=config.levels, image_size=config.image_size,
                                  channels=config.channels)
    if not config.checkpoint:
        raise ValueError(
            "tokenizer.checkpoint is empty: the vq16 tokenizer needs converted VQ-16 weights; "
            f"download vq_ds16_c2i.pt (LlamaGen's README) and run `{CONVERT_COMMAND}`, then "
            "set tokenizer.checkpoint=DIR")
    tok = VQ16Tokenizer(config.checkpoint, config.image_size)
    if config.codebook_size != tok.vocab_size:
        raise ValueError(f"tokenizer.codebook_size={config.codebook_size} but the checkpoint "
                         f"{config.checkpoint!r} has {tok.vocab_size} codes; make them agree")
    return tok
