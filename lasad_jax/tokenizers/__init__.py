"""Tokenizers: images <-> integer code grids, and a factory that builds one from config."""

from __future__ import annotations

from typing import Any

from lasad_jax.tokenizers.base import Tokenizer
from lasad_jax.tokenizers.intensity import IntensityTokenizer
from lasad_jax.tokenizers.vq16 import CONVERT_COMMAND, VQ16Tokenizer

__all__ = ["VALID_NAMES", "IntensityTokenizer", "Tokenizer", "VQ16Tokenizer", "build_tokenizer"]

VALID_NAMES = ("intensity", "vq16")


def _field(config: Any, name: str) -> Any:
    try:
        return config[name]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"tokenizer config is missing the field {name!r}") from None


def build_tokenizer(config: Any) -> Tokenizer:
    """Builds the tokenizer named by `config.name` (an ml_collections ConfigDict).

    The factory is the one place that knows the tokenizer names, so configs, the trainer
    and the sampler can switch tokenizers without importing a concrete class.
    """
    name = _field(config, "name")
    if name not in VALID_NAMES:
        raise ValueError(f"tokenizer name must be one of {', '.join(VALID_NAMES)}; got {name!r}")
    image_size = _field(config, "image_size")
    if not isinstance(image_size, (tuple, list)):
        raise ValueError(
            f"tokenizer image_size must be a tuple or list of 2 ints, got {image_size!r}"
        )
    if name == "vq16":
        return _build_vq16(config, tuple(image_size))
    return IntensityTokenizer(
        levels=_field(config, "levels"),
        image_size=tuple(image_size),
        channels=_field(config, "channels"),
    )


def _build_vq16(config: Any, image_size: tuple[int, int]) -> VQ16Tokenizer:
    """VQ-16 from converted weights; the config's codebook_size, when given, must agree."""
    checkpoint = _field(config, "checkpoint")
    if not checkpoint:
        raise ValueError(
            "tokenizer.checkpoint is empty: the vq16 tokenizer needs converted VQ-16 weights; "
            f"download vq_ds16_c2i.pt (LlamaGen's README) and run `{CONVERT_COMMAND}`, then "
            "set tokenizer.checkpoint=DIR")
    tok = VQ16Tokenizer(checkpoint, image_size)
    expected = config.get("codebook_size") if hasattr(config, "get") else None
    if expected and expected != tok.vocab_size:
        raise ValueError(f"tokenizer.codebook_size={expected} but the checkpoint "
                         f"{checkpoint!r} has {tok.vocab_size} codes; make them agree")
    return tok
