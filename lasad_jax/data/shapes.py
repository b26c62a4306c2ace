"""Generated grey images of ten shape classes: a second 2D dataset, larger than the digits.

Why another dataset: the mixer ablation asks whether spatial-aware decay helps on images,
and one small dataset (the 8x8 digits) is one data point. Shapes are defined by 2D
geometry (a bar pair differs from a stripe pair only in orientation, a frame from a
square only in its interior), so a model must relate pixels across rows as well as
within them. They are generated from a seed, deterministically, with nothing to
download; at 16x16 a sequence is 256 tokens, four times the digits'.

Each image: one shape, centre jittered around the middle, size and brightness drawn at
random, edges anti-aliased by 4x4 supersampling, on a black background.
"""

from __future__ import annotations

import functools

import numpy as np

CLASSES = ("disk", "ring", "square", "frame", "triangle", "diamond", "plus", "cross",
           "hbars", "vbars")
NUM_CLASSES = len(CLASSES)
SPLITS = ("train", "val")
_SUPERSAMPLE = 4


def _inside(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points `(x, y)`, in units of the shape's radius around its centre, lie
    inside shape `name`."""
    ax, ay = np.abs(x), np.abs(y)
    r = np.hypot(x, y)
    if name == "disk":
        return r <= 1.0
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "square":
        return np.maximum(ax, ay) <= 0.85
    if name == "frame":
        m = np.maximum(ax, ay)
        return (m <= 0.9) & (m >= 0.55)
    if name == "triangle":  # apex up (y grows downwards)
        return (y >= -0.8) & (y <= 0.8) & (ax <= 0.95 * (y + 0.8) / 1.6)
    if name == "diamond":
        return ax + ay <= 1.0
    if name == "plus":
        return ((ax <= 0.28) & (ay <= 1.0)) | ((ay <= 0.28) & (ax <= 1.0))
    if name == "cross":
        return (np.abs(x - y) <= 0.4) & (np.abs(x + y) <= 1.9) | (
            (np.abs(x + y) <= 0.4) & (np.abs(x - y) <= 1.9))
    if name == "hbars":
        return (ax <= 0.95) & (np.abs(ay - 0.5) <= 0.22)
    if name == "vbars":
        return (ay <= 0.95) & (np.abs(ax - 0.5) <= 0.22)
    raise ValueError(f"unknown shape {name!r}; valid: {CLASSES}")


def render(name: str, size: int, cx: float, cy: float, radius: float,
           brightness: float) -> np.ndarray:
    """One uint8 `[size, size]` image; `cx, cy, radius` in pixels, `brightness` in (0, 1]."""
    s = _SUPERSAMPLE
    offsets = (np.arange(s) + 0.5) / s
    grid = np.arange(size)[:, None] + offsets[None, :]               # [size, s]
    ys = grid.reshape(-1)[:, None]                                    # [size*s, 1]
    xs = grid.reshape(-1)[None, :]                                    # [1, size*s]
    inside = _inside(name, (xs - cx) / radius, (ys - cy) / radius)    # y grows downwards
    cover = inside.reshape(size, s, size, s).mean(axis=(1, 3))
    return np.round(255.0 * brightness * cover).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _generate(split: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Distinct streams for the splits, so val never repeats a train image's draws.
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    labels = (np.arange(count) % NUM_CLASSES).astype(np.int32)
    rng.shuffle(labels)
    images = np.empty((count, size, size, 1), np.uint8)
    for i, label in enumerate(labels):
        radius = rng.uniform(0.25, 0.42) * size
        cx, cy = (size / 2 + rng.uniform(-0.12, 0.12, 2) * size)
        images[i, ..., 0] = render(CLASSES[label], size, cx, cy, radius,
                                   rng.uniform(0.55, 1.0))
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_shapes(split: str, *, num_train: int = 6000, num_val: int = 600, size: int = 16,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [N, size, size, 1], labels int32 [N])`, classes balanced."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"data.size must be an int >= 8, got {size!r}")
    count = num_train if split == "train" else num_val
    if not isinstance(count, int) or count < NUM_CLASSES:
        raise ValueError(f"data.num_{split} must be an int >= {NUM_CLASSES}, got {count!r}")
    return _generate(split, count, size, seed)
