"""Offline code extraction: images -> augmented views -> tokenizer codes in npy shards.

The AR trainer never decodes a JPEG: each image is cropped into its views once (ADM centre
crop, optionally its mirror, or LlamaGen's ten crops), every view is encoded, and the
trainer later draws one view per image per epoch. A split becomes, in `out_dir`:

    {split}-00000-codes.npy    int16 (vocab <= 32768) or int32, [n, views, h, w]
    {split}-00000-labels.npy   int32, [n]
    ...
    {split}-manifest.json      config, finished shards, skipped images, `complete`

Shards are written atomically (tmp + rename) and the manifest is updated after each one,
so a killed job re-run with the same arguments resumes after the last finished shard and
produces identical files. View 0, which evaluation reads, is a centre crop: the plain ADM
one for "none" and "flip", the centre of the 1.1x crop for "tencrop" (so validation codes
are extracted with `data.val_augment`, "none" by default).

The manifest's config records the tokenizer by its content fingerprint (settings and
weights, `Tokenizer.fingerprint`), not by its class or path, and the images by the
source's fingerprint (which files, in which order, and their sizes; for tfds its version,
split and size): a resumed or repeated extraction with other weights or other images is
refused, naming both, instead of mixing two tokenizers' or two datasets' codes under one
manifest. The splits of one directory must share a tokenizer and class names, since
training validates on one with a model learnt on the other.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from lasad_jax.data.codes import _check_split
from lasad_jax.data.config import AUGMENTS, DataConfig
from lasad_jax.data.extracted import FORMAT, manifest_path, read_manifest
from lasad_jax.data.images import CorruptImageError, adm_center_crop, build_image_source
from lasad_jax.files import require_writable, save_json, save_npy
from lasad_jax.tokenizers import Tokenizer
from lasad_jax.tokenizers.base import short

TENCROP_RANGE = 1.1  # LlamaGen's --crop-range: centre crop to 1.1x, then ten crops
_FIVE = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
VIEW_NAMES = {
    "none": ("center",),
    "flip": ("center", "center_flip"),
    "tencrop": _FIVE + tuple(f"{n}_flip" for n in _FIVE),
}


def shard_paths(out_dir: str | os.PathLike, split: str,
                k: int) -> tuple[pathlib.Path, pathlib.Path]:
    """The `(codes, labels)` paths of shard `k` of `split`."""
    out_dir = pathlib.Path(out_dir)
    return out_dir / f"{split}-{k:05d}-codes.npy", out_dir / f"{split}-{k:05d}-labels.npy"


def make_views(image: Image.Image | np.ndarray, image_size: int, augment: str) -> np.ndarray:
    """The views of one image, uint8 `[V, image_size, image_size, 3]`, in `VIEW_NAMES` order.

    "tencrop" follows LlamaGen's extraction: ADM centre crop to int(1.1 * size), then
    ten crops as torchvision's TenCrop cuts them (four corners, the centre at
    round((S - size) / 2)) plus mirrors. We put the centre first and give view 5 + k as
    the mirror of view k. TenCrop instead flips the image and crops it again: its
    mirrored corners are ours in another order (which a uniform draw ignores), but its
    mirrored centre is cut at round((S - size) / 2) of the flipped image, which is not
    the mirror of the centre crop when S - size is odd: for 256 px (S = 281, margin 25)
    it starts one column to the right, at 13 in the original, where ours mirrors the
    crop at 12. One of the ten views is thus shifted by a pixel.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}; got {augment!r}")
    if augment != "tencrop":
        center = adm_center_crop(image, image_size)
        return np.stack([center, center[:, ::-1]] if augment == "flip" else [center])
    big = adm_center_crop(image, int(image_size * TENCROP_RANGE))
    s, n = image_size, big.shape[0]
    mid = round((n - s) / 2.0)  # torchvision center_crop's rounding
    corners = [(mid, mid), (0, 0), (0, n - s), (n - s, 0), (n - s, n - s)]
    five = [big[top : top + s, left : left + s] for top, left in corners]
    return np.stack(five + [v[:, ::-1] for v in five])


def _refusal(mpath: pathlib.Path, old: dict, config: dict, out_dir: pathlib.Path,
             split: str, description: str, source: str) -> ValueError:
    """One line naming what the manifest records and what this run would write."""
    fix = (f"extract into an empty directory (config.data.codes_dir), or delete the "
           f"{split}-* files in {out_dir} to start this split over")
    recorded = old.get("config", {})
    if "source" not in recorded:
        return ValueError(
            f"{mpath} is an unfinished extraction made before manifests recorded which "
            f"images they hold ({old.get('source')}), so resuming it could mix two "
            f"datasets: {fix}")
    if recorded.get("source") != config["source"]:
        return ValueError(
            f"{mpath} holds codes of the images {short(recorded.get('source'))} "
            f"({old.get('source')}), but this run reads {short(config['source'])} ({source}); "
            f"codes of two datasets must not be mixed: {fix}")
    if recorded.get("tokenizer") != config["tokenizer"]:
        was = old.get("tokenizer_description", "")
        return ValueError(
            f"{mpath} holds codes of tokenizer {short(recorded.get('tokenizer'))}"
            f"{f' ({was})' if was else ''}, but this run's tokenizer is "
            f"{short(config['tokenizer'])} ({description}); codes of two tokenizers must not "
            f"be mixed: {fix}")
    diff = {k: (recorded.get(k), v) for k, v in config.items() if recorded.get(k) != v}
    return ValueError(f"{mpath} records a different extraction config (field: (recorded, "
                      f"requested)) {diff}; {fix}")


def _check_other_splits(out_dir: pathlib.Path, split: str, classes: Any,
                        tokenizer: Tokenizer) -> None:
    """Refuses a split whose classes or tokenizer differ from those of a split already
    extracted into `out_dir`. A label is a class's position among the sorted class
    folders of its own split, so a class missing from one split would shift every later
    label there: `val` would then call class 2 what `train` calls class 3, and nothing
    else notices. Codes of another tokenizer are another vocabulary: validation on them
    would score a model on tokens it never learnt."""
    for other in sorted(out_dir.glob("*-manifest.json")):
        if other.name == f"{split}-manifest.json":
            continue
        manifest = read_manifest(other)
        recorded = manifest["config"].get("tokenizer")
        if recorded is not None and recorded != tokenizer.fingerprint:
            was = manifest.get("tokenizer_description", "")
            raise ValueError(
                f"{other} holds codes of tokenizer {short(recorded)}{f' ({was})' if was else ''}"
                f", but this run's tokenizer for the {split!r} split is "
                f"{short(tokenizer.fingerprint)} ({tokenizer.describe()}); the splits of one "
                "directory must come from one tokenizer: extract into another directory "
                "(config.data.codes_dir), or with the same tokenizer")
        recorded = manifest.get("class_names")
        if classes is None or recorded is None or recorded == list(classes):
            continue
        only_here = sorted(set(classes) - set(recorded))[:3]
        only_there = sorted(set(recorded) - set(classes))[:3]
        raise ValueError(
            f"the {split!r} split has {len(classes)} classes but {other} records "
            f"{len(recorded)} (only in {split!r}: {only_here}, only there: {only_there}); "
            "labels are positions among the sorted class folders, so both splits need the "
            "same class folders")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def extract_codes(
    source: Any,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    *,
    split: str,
    image_size: int,
    augment: str = "flip",
    shard_size: int = 10_000,
    batch_size: int = 64,
    skip_corrupt: bool = False,
    max_shards: int | None = None,
) -> dict:
    """Extracts `split` of `source` into `out_dir`; returns the final manifest.

    `source[i]` gives `{"image", "label"}` (and "path"); images are processed in index
    order, shard k holding source images [k * shard_size, (k + 1) * shard_size) minus any
    skipped ones. `batch_size` counts images per `tokenizer.encode` call (times the views).
    `max_shards` stops after that many shards in this call (a time-boxed job; re-run to
    continue). Corrupt images stop the run with the file's name unless `skip_corrupt`,
    when they are left out and listed in the manifest.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}; got {augment!r}")
    split = _check_split(split)
    image_size = _positive_int("image_size", image_size)
    shard_size = _positive_int("shard_size", shard_size)
    batch_size = _positive_int("batch_size", batch_size)
    if tuple(tokenizer.image_shape) != (image_size, image_size, 3):
        raise ValueError(
            f"the tokenizer reads images of shape {tuple(tokenizer.image_shape)}, but extraction "
            f"crops to ({image_size}, {image_size}, 3); make image_size and the tokenizer's "
            "image_size agree and use a 3-channel tokenizer")
    if len(source) == 0:
        raise ValueError(f"the image source {source!r} holds no images")
    out_dir = pathlib.Path(out_dir)
    config = {
        "split": split, "image_size": image_size, "augment": augment,
        "views": len(VIEW_NAMES[augment]), "view_names": list(VIEW_NAMES[augment]),
        "grid": list(tokenizer.grid_shape), "vocab_size": int(tokenizer.vocab_size),
        "tokenizer": tokenizer.fingerprint, "shard_size": shard_size,
        "num_source_images": len(source),
        # Sources without a fingerprint (a caller's own) record None: not checked.
        "source": getattr(source, "fingerprint", None),
        "dtype": "int16" if tokenizer.vocab_size <= np.iinfo(np.int16).max + 1 else "int32",
    }
    mpath = manifest_path(out_dir, split)
    classes = getattr(source, "class_names", None)
    manifest = {"format": FORMAT, "config": config, "source": repr(source),
                "tokenizer_description": tokenizer.describe(), "shards": [],
                "num_images": 0, "num_skipped": 0, "skipped": [], "complete": False,
                "class_names": list(classes) if classes is not None else None}
    if mpath.is_file():
        old = read_manifest(mpath)
        if "source" not in old["config"] and old["complete"]:
            # Finished before sources were recorded: nothing will be written, so nothing
            # can be mixed (an unfinished one is refused below: its images are unknown).
            old["config"]["source"] = config["source"]
        if old.get("config") != config:
            raise _refusal(mpath, old, config, out_dir, split, tokenizer.describe(),
                           repr(source))
        manifest = old
        if manifest["complete"]:
            return manifest  # nothing to add: the files stay as they are
    _check_other_splits(out_dir, split, classes, tokenizer)
    require_writable(out_dir)
    num_shards = -(-len(source) // shard_size)
    first = len(manifest["shards"])
    last = num_shards if max_shards is None else min(num_shards, first + max(0, max_shards))
    views, dtype = config["views"], np.dtype(config["dtype"])
    bar = tqdm(total=len(source), initial=min(first * shard_size, len(source)),
               desc=f"extract {split}", unit="img")
    for k in range(first, last):
        start, stop = k * shard_size, min((k + 1) * shard_size, len(source))
        codes, labels, skipped = [], [], []
        for b in range(start, stop, batch_size):
            batch_views = []
            for i in range(b, min(b + batch_size, stop)):
                try:
                    item = source[i]
                except CorruptImageError as e:
                    if not skip_corrupt:
                        raise
                    skipped.append({"index": i, "error": str(e).split("; ")[0]})
                    continue
                batch_views.append(make_views(item["image"], image_size, augment))
                labels.append(int(item["label"]))
            if batch_views:
                flat = np.concatenate(batch_views)
                encoded = tokenizer.encode(flat)
                codes.append(encoded.reshape(len(batch_views), views, *encoded.shape[1:]))
            bar.update(min(b + batch_size, stop) - b)
        grid = tuple(tokenizer.grid_shape)
        codes_arr = (np.concatenate(codes) if codes else np.zeros((0, views, *grid))).astype(dtype)
        codes_path, labels_path = shard_paths(out_dir, split, k)
        save_npy(codes_path, codes_arr)
        save_npy(labels_path, np.asarray(labels, np.int32))
        manifest["shards"].append({
            "codes": codes_path.name, "labels": labels_path.name, "start": start,
            "stop": stop, "num_images": len(labels)})
        manifest["skipped"].extend(skipped)
        manifest["num_images"] += len(labels)
        manifest["num_skipped"] += len(skipped)
        manifest["complete"] = len(manifest["shards"]) == num_shards
        save_json(mpath, manifest)
    bar.close()
    return manifest


def extract_split(data: DataConfig, tokenizer: Tokenizer, split: str,
                  *, max_shards: int | None = None) -> dict:
    """`split` of the image source of `data` encoded into `data.codes_dir`, as
    `--mode=extract` does it; the crop size is the tokenizer's image height.

    Training images get `data.augment`'s views; other splits get `data.val_augment`'s
    (by default only the plain centre crop, which evaluation reads).
    """
    if not data.codes_dir:
        raise ValueError("config.data.codes_dir must name the output directory of the "
                         "extracted codes; got an empty value")
    source = build_image_source(data.image_source, split, image_dir=data.image_dir,
                                tfds_data_dir=data.tfds_data_dir, manual_dir=data.manual_dir)
    return extract_codes(
        source, tokenizer, data.codes_dir, split=split,
        image_size=int(tokenizer.image_shape[0]),
        augment=data.augment if split == "train" else data.val_augment,
        shard_size=data.shard_size, batch_size=data.extract_batch_size,
        skip_corrupt=data.skip_corrupt, max_shards=max_shards)
