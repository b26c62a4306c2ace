"""The resize of `eval.image_size`: samples of one size scored against a reference of
another, as LlamaGen scores its 384 px models against ADM's 256 px reference batch.

LlamaGen resizes the decoder's output with `torch.nn.functional.interpolate(...,
mode="bicubic")` (align_corners=False, no antialiasing) before quantising it; this is the
same filter in numpy, applied to the uint8 images our tokenizers decode to, rounded back
to uint8. The only difference is that extra rounding of the input (< 0.5 grey level).
PIL's bicubic is not used: it widens its kernel when shrinking (antialiasing), which
LlamaGen's resize does not, so 384 -> 256 would give other, softer images.
"""

from __future__ import annotations

import numpy as np

CUBIC_A = -0.75  # torch's (and OpenCV's) bicubic coefficient


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with `CUBIC_A`, at distances `x`."""
    a, x = CUBIC_A, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _weights(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` matrix of torch's bicubic resize along one axis: output `i`
    samples the input at `(i + 0.5) * in / out - 0.5` from its four neighbours, with
    indices past the border clamped to it (border pixels repeat)."""
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    base = np.floor(src)
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    for tap in range(-1, 3):
        index = np.clip(base + tap, 0, size_in - 1).astype(int)
        np.add.at(matrix, (rows, index), _cubic(src - (base + tap)))
    return matrix


def resize_bicubic(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 `[N, H, W, C]` images resized to `[N, size, size, C]` (unchanged when they
    are that size already), rounded and clipped to 0..255."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    height, width = images.shape[1:3]
    if (height, width) == (size, size):
        return images
    rows = _weights(height, size).astype(np.float32)
    cols = _weights(width, size).astype(np.float32)
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for start in range(0, len(images), 32):  # float copies of 32 images at a time
        chunk = images[start:start + 32].astype(np.float32)
        chunk = np.einsum("yh,nhwc->nywc", rows, chunk)
        chunk = np.einsum("nywc,xw->nyxc", chunk, cols)
        out[start:start + 32] = np.clip(np.rint(chunk), 0, 255)
    return out


def scored_size(image_size: int, native: tuple[int, int]) -> tuple[int, int]:
    """The size samples of `native` (height, width) are scored at: `image_size` squared,
    or `native` when it is 0. The resize makes squares, so other shapes are refused."""
    if not image_size:
        return tuple(native)
    if native[0] != native[1]:
        raise ValueError(f"config.eval.image_size={image_size} resizes square images, but "
                         f"the samples are {native[0]}x{native[1]} (tokenizer.image_size); "
                         "set config.eval.image_size=0 to score them as they are")
    return image_size, image_size
