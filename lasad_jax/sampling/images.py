"""Writing samples: a PNG grid to look at and an ADM-style `.npz` to evaluate."""

from __future__ import annotations

import numpy as np

from lasad_jax import files


def make_grid(images: np.ndarray, *, cols: int, scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tiles `[N, H, W, C]` uint8 images row by row into one uint8 image, enlarged
    `scale` times (nearest neighbour, so small images stay crisp) with `pad` white pixels
    between tiles."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if cols < 1 or scale < 1 or pad < 0:
        raise ValueError(f"need cols >= 1, scale >= 1, pad >= 0; got {cols}, {scale}, {pad}")
    n, h, w, c = images.shape
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = img
    return grid


def save_png(path: str, image: np.ndarray, text: dict[str, str] | None = None) -> None:
    """The grid as a PNG, written atomically; `text` goes into its text chunks."""
    files.save_png(path, image, text)


def save_npz(path: str, images: np.ndarray, labels: np.ndarray, settings: str = "") -> None:
    """`arr_0`: uint8 `[N, H, W, 3]` (the ADM evaluation suite's layout; grayscale is
    replicated to 3 channels), `labels`: int32 `[N]`, and `settings`, the JSON of what
    made them (when given); written atomically."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    arrays = {"arr_0": images.astype(np.uint8), "labels": labels.astype(np.int32)}
    if settings:
        arrays["settings"] = np.asarray(settings)
    files.save_npz(path, **arrays)
