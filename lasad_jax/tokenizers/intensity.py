"""One token per pixel: the pixel's grey level quantised to a few levels.

This is the tokenizer of the embedded CPU demo. It needs no training and no weights, and
with `levels=17` it is lossless on scikit-learn's 8x8 digits (pixel values 0..16), which
makes the generator's samples directly comparable with the data.

Both directions round half up using integer arithmetic, so there is no float rounding
to disagree about: every level's decoded grey value encodes back to the same level.
"""

from __future__ import annotations

import numpy as np

from lasad_jax.tokenizers.base import Tokenizer, content_fingerprint

_VALID_CHANNELS = (1, 3)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class IntensityTokenizer(Tokenizer):
    """Quantises grey levels `0..255` to `levels` tokens, one per pixel.

    Colour input (`channels=3`) is reduced to the mean of its channels before quantising
    and decoded as grey replicated over the three channels, so a grey image round-trips.
    """

    def __init__(self, levels: int, image_size: tuple[int, int], channels: int = 1):
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not (
            2 <= levels <= 256
        ):
            raise ValueError(f"levels must be an int in [2, 256], got {levels!r}")
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
            raise ValueError(
                f"image_size must be a (height, width) pair of ints, got {image_size!r}"
            )
        height = _check_positive_int("image_size[0]", image_size[0])
        width = _check_positive_int("image_size[1]", image_size[1])
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or (
            channels not in _VALID_CHANNELS
        ):
            raise ValueError(f"channels must be one of {_VALID_CHANNELS}, got {channels!r}")
        self._levels = int(levels)
        self._size = (height, width)
        self._channels = int(channels)

    def __repr__(self) -> str:
        return (
            f"IntensityTokenizer(levels={self._levels}, image_size={self._size}, "
            f"channels={self._channels})"
        )

    def _fingerprint(self) -> str:
        return content_fingerprint({"tokenizer": "intensity", "levels": self._levels,
                                    "image_size": list(self._size), "channels": self._channels})

    @property
    def vocab_size(self) -> int:
        return self._levels

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self._size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*self._size, self._channels)

    def _encode(self, images: np.ndarray) -> np.ndarray:
        # token = round_half_up(mean * (levels - 1) / 255) with mean = total / C, written
        # over integers as floor((2 * total * (levels - 1) + 255 * C) / (2 * 255 * C)).
        c, top = self._channels, self._levels - 1
        total = images.astype(np.int64).sum(axis=-1)
        return ((2 * total * top + 255 * c) // (2 * 255 * c)).astype(np.int32)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        # grey = round_half_up(level * 255 / (levels - 1)), over integers.
        top = self._levels - 1
        grey = ((2 * codes.astype(np.int64) * 255 + top) // (2 * top)).astype(np.uint8)
        return np.repeat(grey[..., None], self._channels, axis=-1)
