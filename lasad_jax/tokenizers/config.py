"""The `tokenizer` block of a generator config: which tokenizer turns images into codes.

"intensity" needs no weights (one token per pixel, `levels` grey levels); "vq16" reads
converted or trained VQ weights from the directory `checkpoint`. Whether those weights
must exist depends on the mode (`checkpoint_problems`): training on extracted codes
needs only the code geometry, encoding or decoding images needs the weights.
"""

from __future__ import annotations

import dataclasses

from lasad_jax.files import RemoteError, isdir
from lasad_jax.tokenizers.vq.weights import CONVERT_COMMAND
from lasad_jax.validation import Problems, is_int

TOKENIZERS = ("intensity", "vq16")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    name: str = "vq16"
    image_size: tuple[int, int] = (256, 256)  # (height, width) of the images it reads
    levels: int = 17             # intensity: grey levels (= vocabulary)
    channels: int = 3            # intensity: 1 (grey) or 3 (RGB averaged to grey)
    codebook_size: int = 16384   # vq16: the vocabulary; must equal the weights' once they exist
    checkpoint: str = ""         # vq16: the directory of vq_params.npz and vq_config.json

    def __post_init__(self) -> None:
        p = Problems("tokenizer")
        p.one_of("name", self.name, TOKENIZERS)
        p.check(isinstance(self.image_size, tuple) and len(self.image_size) == 2
                and all(is_int(s) and s > 0 for s in self.image_size), "image_size",
                f"must be a (height, width) pair of positive ints, got {self.image_size!r}")
        if self.name == "intensity":
            p.check(is_int(self.levels) and 2 <= self.levels <= 256, "levels",
                    f"must be an int in [2, 256], got {self.levels!r}")
            p.one_of("channels", self.channels, (1, 3))
        if self.name == "vq16":
            p.positive_int("codebook_size", self.codebook_size)
            p.location("checkpoint", self.checkpoint)
        p.raise_if_any()


def checkpoint_problems(tokenizer: TokenizerConfig, why: str) -> list[str]:
    """For a VQ tokenizer whose weights `why` needs: whether its directory exists."""
    if tokenizer.name != "vq16":
        return []
    hint = (f"get LlamaGen's vq_ds16_c2i.pt and convert it with `{CONVERT_COMMAND}`, or "
            "train one with a tokenizer config")
    if not tokenizer.checkpoint:
        return [f"tokenizer.checkpoint is empty: {why} needs the VQ-16 tokenizer weights; "
                f"{hint}"]
    # A gs:// checkpoint is only looked for here (one request); it is copied to the local
    # cache when the tokenizer is built (`VQ16Tokenizer`), not while validating.
    try:
        found = isdir(tokenizer.checkpoint)
    except RemoteError as err:
        return [f"tokenizer.checkpoint {err}"]
    if not found:
        return [f"tokenizer.checkpoint={tokenizer.checkpoint!r} does not exist: {why} needs "
                f"the VQ-16 tokenizer weights; {hint}"]
    return []
