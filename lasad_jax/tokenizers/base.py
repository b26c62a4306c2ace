"""The contract every tokenizer honours, and the input checks they all share.

The model, trainer and sampler only ever see integer code grids, so they work with any
tokenizer behind this interface: the per-pixel intensity tokenizer of the CPU demo, and
later the VQ-16 tokenizer whose encoder and decoder are jitted JAX functions. Checking
inputs here, once, means a wrong shape or an out-of-range code fails with the same clear
message whichever tokenizer is in use, instead of deep inside an encoder or a gather.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

FINGERPRINT_PREFIX = "sha256:"


def content_fingerprint(settings: dict[str, Any],
                        arrays: Iterable[tuple[str, np.ndarray]] = ()) -> str:
    """`sha256:<hex>` of `settings` (canonical JSON) and of each named array's dtype,
    shape and bytes, in the order given: what a tokenizer computes with, not its name
    or where its files live."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def short(fingerprint: str | None) -> str:
    """A fingerprint as messages show it: a digest as its prefix and 12 hex digits, any
    other (a tfds source's `name/version/split/size`) whole."""
    if not fingerprint:
        return "unknown"
    if fingerprint.startswith(FINGERPRINT_PREFIX):
        return fingerprint[:len(FINGERPRINT_PREFIX) + 12]
    return fingerprint


class Tokenizer(abc.ABC):
    """Maps uint8 images `[N, H, W, C]` to int32 code grids `[N, h, w]` and back.

    Subclasses implement `_encode` and `_decode` on inputs that have already passed the
    checks in `encode` / `decode`, so they can assume correct shapes, dtypes and ranges.
    """

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct codes; valid codes are `0 .. vocab_size - 1`."""

    @property
    @abc.abstractmethod
    def grid_shape(self) -> tuple[int, int]:
        """`(h, w)` of one image's code grid; the model's decay needs the width."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)` of the uint8 images this tokenizer reads and writes."""

    @abc.abstractmethod
    def _fingerprint(self) -> str:
        """`content_fingerprint` of the settings and weights (computed once)."""

    @property
    def fingerprint(self) -> str:
        """`sha256:<hex>` of what fixes the codes: the settings and the weights (for a
        VQ tokenizer its architecture and every parameter). Extracted codes, generator
        checkpoints and reference statistics record it, and whatever reads them refuses
        a mismatch: codes of one tokenizer must never be decoded by another."""
        if getattr(self, "_fingerprint_cache", None) is None:
            self._fingerprint_cache = self._fingerprint()
        return self._fingerprint_cache

    def describe(self) -> str:
        """What messages call this tokenizer (its settings, or where its weights are)."""
        return repr(self)

    @property
    def seq_len(self) -> int:
        """Tokens per image in raster order (`h * w`)."""
        h, w = self.grid_shape
        return h * w

    @abc.abstractmethod
    def _encode(self, images: np.ndarray) -> np.ndarray:
        """Checked uint8 `[N, H, W, C]` -> int32 `[N, h, w]`."""

    @abc.abstractmethod
    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """Checked int `[N, h, w]` in range -> uint8 `[N, H, W, C]`."""

    def encode(self, images: Any) -> np.ndarray:
        images = self.check_images(images)
        return np.asarray(self._encode(images), np.int32)

    def decode(self, codes: Any) -> np.ndarray:
        codes = self.check_codes(codes)
        return np.asarray(self._decode(codes), np.uint8)

    def check_images(self, images: Any) -> np.ndarray:
        """Returns `images` as a numpy array after checking shape and dtype."""
        images = np.asarray(images)
        layout = "[N, " + ", ".join(str(d) for d in self.image_shape) + "]"
        if images.ndim != 4 or images.shape[1:] != tuple(self.image_shape):
            raise ValueError(f"images must have shape {layout}, got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must have dtype uint8 (values 0..255), got {images.dtype}")
        return images

    def check_codes(self, codes: Any) -> np.ndarray:
        """Returns `codes` as a numpy array after checking shape, dtype and range."""
        codes = np.asarray(codes)
        layout = "[N, " + ", ".join(str(d) for d in self.grid_shape) + "]"
        if codes.ndim != 3 or codes.shape[1:] != tuple(self.grid_shape):
            raise ValueError(f"codes must have shape {layout}, got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must have an integer dtype, got {codes.dtype}")
        if codes.size:
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(
                    f"codes must lie in [0, {self.vocab_size}) (vocab_size={self.vocab_size}), "
                    f"got values in [{lo}, {hi}]"
                )
        return codes
