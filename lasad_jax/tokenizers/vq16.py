"""The VQ-16 tokenizer behind the `Tokenizer` interface: uint8 images <-> code grids.

Pixels map to the model's range as LlamaGen does: encoding reads `x / 127.5 - 1` (its
`ToTensor` + `Normalize(0.5, 0.5)`), and decoding writes `floor(clip(127.5 * y + 128,
0, 255))` (its `clamp(127.5 * y + 128, 0, 255).to(uint8)`, which truncates), i.e. rounds
`127.5 * (y + 1)` to nearest with ties up. Work runs in fixed-size jitted batches, the
last one zero-padded, so one compiled program per direction serves any number of images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lasad_jax.files import is_remote, local_copy
from lasad_jax.tokenizers.base import Tokenizer, content_fingerprint
from lasad_jax.tokenizers.vq.weights import CONVERT_COMMAND, load_vq


def _encode_fn(graphdef: Any) -> Callable[[Any, jax.Array], jax.Array]:
    def encode(state: Any, images: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, state)
        x = images.astype(jnp.float32) / 127.5 - 1.0
        return model.encode(x)[1]
    return jax.jit(encode)


def _decode_fn(graphdef: Any) -> Callable[[Any, jax.Array], jax.Array]:
    def decode(state: Any, codes: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, state)
        y = model.decode_codes(codes.astype(jnp.int32))
        return jnp.floor(jnp.clip(127.5 * y + 128.0, 0.0, 255.0)).astype(jnp.uint8)
    return jax.jit(decode)


class VQ16Tokenizer(Tokenizer):
    """LlamaGen's VQ-16 (or any converted VQ model) as a `Tokenizer`.

    `checkpoint_dir` is a directory written by `lasad_jax.tokenizers.vq.weights.save_vq`
    (the LlamaGen converter's output, or a tokenizer trained here), local or `gs://`
    (copied once into the local cache, `lasad_jax.files.local_copy`); `image_size` is
    `(H, W)`, each a multiple of the model's downsampling factor (16 for VQ-16: 256 px ->
    16x16 codes, 384 px -> 24x24).
    """

    def __init__(self, checkpoint_dir: str, image_size: tuple[int, int], batch_size: int = 32):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        source = checkpoint_dir
        if checkpoint_dir and is_remote(checkpoint_dir):
            # Weights in a bucket are copied once per machine, then read as local files.
            checkpoint_dir = local_copy(checkpoint_dir, "tokenizer.checkpoint")
        if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
            raise FileNotFoundError(
                f"VQ-16 checkpoint directory {checkpoint_dir!r} does not exist. Download "
                "vq_ds16_c2i.pt (LlamaGen's README, https://github.com/FoundationVision/"
                f"LlamaGen) and convert it once with `{CONVERT_COMMAND}` (needs torch), then "
                "pass DIR as the checkpoint directory (config: tokenizer.checkpoint)")
        model = load_vq(checkpoint_dir)
        self.config = model.config
        factor = model.config.downsample_factor
        if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                or not all(isinstance(s, int) and s > 0 and s % factor == 0 for s in image_size)):
            raise ValueError(f"image_size must be a (height, width) pair of positive multiples "
                             f"of {factor} (the model's downsampling factor), got {image_size!r}")
        self.checkpoint_dir = source  # as configured (a URL's local copy is not named)
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._grid = (self._image_size[0] // factor, self._image_size[1] // factor)
        self.batch_size = batch_size
        graphdef, self._state = nnx.split(model)
        self._encode_batch = _encode_fn(graphdef)
        self._decode_batch = _decode_fn(graphdef)

    def __repr__(self) -> str:
        return f"VQ16Tokenizer({self.checkpoint_dir!r}, image_size={self._image_size})"

    def _fingerprint(self) -> str:
        # The architecture and every parameter as loaded: the same weights saved again,
        # copied or converted elsewhere keep their fingerprint; other weights do not.
        arrays = sorted(("/".join(map(str, path)), np.asarray(var[...]))
                        for path, var in nnx.to_flat_state(self._state))
        return content_fingerprint({"tokenizer": "vq", "config": self.config.to_dict(),
                                    "image_size": list(self._image_size)}, arrays)

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self._grid

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*self._image_size, self.config.in_channels)

    def _batched(self, fn: Callable[[Any, jax.Array], jax.Array], inputs: np.ndarray,
                 out_tail: tuple[int, ...], out_dtype: Any) -> np.ndarray:
        """Runs `fn` over `inputs` in batches of exactly `batch_size` (last one padded)."""
        n, b = len(inputs), self.batch_size
        out = np.empty((n, *out_tail), out_dtype)
        for start in range(0, n, b):
            chunk = inputs[start:start + b]
            k = len(chunk)
            if k < b:
                pad = np.zeros((b - k, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            out[start:start + k] = np.asarray(fn(self._state, chunk))[:k]
        return out

    def _encode(self, images: np.ndarray) -> np.ndarray:
        return self._batched(self._encode_batch, images, self._grid, np.int32)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._batched(self._decode_batch, codes.astype(np.int32), self.image_shape,
                             np.uint8)
