"""scikit-learn's 8x8 handwritten digits as uint8 images: the embedded demo dataset.

The 1797 images ship inside scikit-learn, so the CPU demo trains without a download.
Pixels hold ink counts 0..16; they are stretched to grey values round(x * 255 / 16) so
that `IntensityTokenizer(levels=17)` gives back exactly the original 0..16 as tokens.
"""

from __future__ import annotations

import functools

import numpy as np

SPLITS = ("train", "val")
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn import datasets

    bunch = datasets.load_digits()
    ink = np.asarray(bunch.images).round().astype(np.int64)  # [N, 8, 8], values 0..16
    grey = (2 * ink * 255 + 16) // 32  # round half up of ink * 255 / 16, over integers
    images = grey.astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_digits(
    split: str, *, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(images uint8 [N, 8, 8, 1], labels int32 [N])` for `split`.

    The split is stratified: within each class a permutation drawn from `seed` sends
    round(val_fraction * class size) images to "val" and the rest to "train". The same
    `seed` and `val_fraction` always give the same disjoint splits, which together hold
    all 1797 images; each split keeps the dataset's original order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0.0 < val_fraction < 1.0
    ):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    images, labels = _all_digits()
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        is_val[members[: int(round(val_fraction * len(members)))]] = True
    if not is_val.any() or is_val.all():
        raise ValueError(
            f"val_fraction={val_fraction} leaves the train or the val split empty; "
            "choose a value that leaves images in both splits"
        )
    keep = is_val if split == "val" else ~is_val
    return images[keep], labels[keep]
