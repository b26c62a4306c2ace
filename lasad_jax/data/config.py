"""The `data` block of a config: which dataset, where it lives, how it is extracted.

Two tasks read data differently, so there are two blocks. The generator reads token
rows (`DataConfig`: the embedded digits and shapes, tokenized on the fly, or codes
extracted offline); the tokenizer trainer reads pixels (`ImageDataConfig`). Each checks
its own fields when built; `run_problems` says what a mode needs on disk, and
`tokenizer_fit_problems` whether the tokenizer reads the embedded images' shape.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from lasad_jax.data import digits, shapes
from lasad_jax.data.codes import code_paths
from lasad_jax.data.extracted import manifest_path
from lasad_jax.files import exists, is_remote
from lasad_jax.validation import Problems

# Our split names -> tfds imagenet2012's; "val" is what the codes directory and trainer use.
TFDS_SPLITS = {"train": "train", "val": "validation", "validation": "validation"}

TOKEN_DATASETS = ("digits", "shapes", "codes", "extracted")
EMBEDDED = ("digits", "shapes")  # image datasets that ship with (or are drawn by) the code
EMBEDDED_CLASSES = {"digits": digits.NUM_CLASSES, "shapes": shapes.NUM_CLASSES}
IMAGE_DATASETS = ("digits", "imagefolder", "tfds")
IMAGE_SOURCES = ("imagefolder", "tfds")
AUGMENTS = ("none", "flip", "tencrop")
# A split is a directory (imagefolder) and a file prefix of the codes: a plain name.
SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _common_problems(problems: Problems, name: str, val_fraction: float, seed: int) -> None:
    problems.seed("seed", seed)
    if name == "digits":
        problems.number("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True,
                        high_open=True)
    else:
        problems.number("val_fraction", val_fraction, low=0.0, high=1.0, high_open=True)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The generator's dataset. `name` picks it: "digits" (scikit-learn's 8x8 digits),
    "shapes" (generated `size` px shapes), "codes" (`{split}_codes.npy` files) or
    "extracted" (shards written by `--mode=extract` from `image_source`)."""

    name: str = "extracted"
    num_classes: int = 1000
    val_fraction: float = 0.0  # digits only: the share of each class held out for validation
    seed: int = 0              # the digits' split and the shapes' drawing
    codes_dir: str = ""        # codes / extracted: the directory of the code files
    size: int = 16             # shapes: image side in pixels
    num_train: int = 6000      # shapes: images per split
    num_val: int = 600
    image_source: str = "tfds"  # extraction: where the images come from
    image_dir: str = ""         # imagefolder: ROOT with ROOT/<split>/<class>/<image>
    tfds_data_dir: str = ""     # tfds: the data_dir of imagenet2012
    manual_dir: str = ""        # tfds: where the ImageNet tars are, to prepare it
    augment: str = "tencrop"    # extraction: views of each training image
    val_augment: str = "none"   # extraction: views of each image of the other splits
    extract_splits: tuple[str, ...] = ("train", "val")
    shard_size: int = 10_000
    extract_batch_size: int = 64
    skip_corrupt: bool = False

    def __post_init__(self) -> None:
        p = Problems("data")
        p.one_of("name", self.name, TOKEN_DATASETS)
        if p.positive_int("num_classes", self.num_classes) and self.name in EMBEDDED:
            has = EMBEDDED_CLASSES[self.name]
            p.check(self.num_classes >= has, "num_classes", f"must be at least {has}, the "
                    f"classes of the {self.name} dataset (data.name={self.name!r}); got "
                    f"{self.num_classes}")
        _common_problems(p, self.name, self.val_fraction, self.seed)
        for field in ("codes_dir", "image_dir", "tfds_data_dir", "manual_dir"):
            p.location(field, getattr(self, field))
        if self.name == "shapes":
            p.int_at_least("size", self.size, 8)
            p.int_at_least("num_train", self.num_train, 10)
            p.int_at_least("num_val", self.num_val, 10)
        p.one_of("image_source", self.image_source, IMAGE_SOURCES)
        p.one_of("augment", self.augment, AUGMENTS)
        p.one_of("val_augment", self.val_augment, AUGMENTS)
        # Checked here, not when extraction reaches the split: a flag read as one odd
        # string ('(train,val)',) would otherwise fail only after the first split's work.
        p.check(isinstance(self.extract_splits, tuple) and self.extract_splits and all(
            isinstance(s, str) and SPLIT_NAME.fullmatch(s) for s in self.extract_splits),
            "extract_splits", "must be a non-empty tuple of split names (letters, digits, "
            f"'_', '-', '.'), such as ('train', 'val'); got {self.extract_splits!r}")
        p.positive_int("shard_size", self.shard_size)
        p.positive_int("extract_batch_size", self.extract_batch_size)
        p.check(isinstance(self.skip_corrupt, bool), "skip_corrupt",
                f"must be True or False, got {self.skip_corrupt!r}")
        p.raise_if_any()


@dataclasses.dataclass(frozen=True)
class ImageDataConfig:
    """The tokenizer trainer's pixels: "digits" (upscaled to RGB), "imagefolder"
    (`image_dir/<split>/<class>/<image>`) or "tfds" (imagenet2012)."""

    name: str = "tfds"
    val_fraction: float = 0.0
    seed: int = 0
    image_dir: str = ""
    tfds_data_dir: str = ""
    manual_dir: str = ""

    def __post_init__(self) -> None:
        p = Problems("data")
        p.one_of("name", self.name, IMAGE_DATASETS)
        _common_problems(p, self.name, self.val_fraction, self.seed)
        for field in ("image_dir", "tfds_data_dir", "manual_dir"):
            p.location(field, getattr(self, field))
        p.raise_if_any()


def _within(directory: str, name: str) -> str:
    """`directory/name`, keeping a gs:// URL's double slash (pathlib would drop one)."""
    if is_remote(directory):
        return f"{directory.rstrip('/')}/{name}"
    return str(pathlib.Path(directory) / name)


def run_problems(data: DataConfig | ImageDataConfig, mode: str) -> list[str]:
    """What `mode` needs of the dataset before anything is read: the code files for
    training on codes, an output directory for extraction, an image directory."""
    problems = []
    if mode == "train" and data.name == "codes":
        if not data.codes_dir:
            problems.append(
                "data.codes_dir is empty: this config trains on pre-extracted token codes; "
                "point it at a directory holding train_codes.npy and train_labels.npy")
        else:
            wanted = [_within(data.codes_dir, p.name) for p in code_paths(data.codes_dir, "train")]
            missing = [path for path in wanted if not exists(path)]
            if missing:
                problems.append(f"data.codes_dir={data.codes_dir!r} lacks {missing}")
    if mode == "train" and data.name == "extracted":
        manifest = _within(data.codes_dir, manifest_path(data.codes_dir, "train").name)
        if not data.codes_dir:
            problems.append("data.codes_dir is empty: this config trains on extracted token "
                            "codes; run --mode=extract first")
        elif not exists(manifest):
            problems.append(f"data.codes_dir={data.codes_dir!r} holds no extracted train "
                            f"split ({manifest} is missing): run --mode=extract first")
    if mode == "extract" and not data.codes_dir:
        problems.append("data.codes_dir is empty: name the directory the extracted codes "
                        "go to")
    elif mode == "extract" and is_remote(data.codes_dir):
        # Extraction resumes from memory-mapped shards and manifests on a local disk.
        problems.append(f"data.codes_dir={data.codes_dir!r} is remote: extract to a local "
                        "directory, then copy it to the bucket with gsutil -m cp -r")
    if isinstance(data, ImageDataConfig):
        source = data.name if mode == "train" else None
    else:
        source = data.image_source if mode == "extract" else None
    if source == "imagefolder" and not data.image_dir:
        problems.append("data.image_dir is empty: name the directory holding "
                        "<split>/<class>/<image> files")
    elif source == "imagefolder" and not os.path.isdir(data.image_dir):
        problems.append(f"data.image_dir={data.image_dir!r} is not a directory")
    elif source == "imagefolder" and mode == "extract":
        # Found now, not after the splits before it are extracted.
        missing = [s for s in data.extract_splits
                   if not os.path.isdir(os.path.join(data.image_dir, s))]
        if missing:
            problems.append(f"data.extract_splits names {missing}, which data.image_dir="
                            f"{data.image_dir!r} has no folder for (each split is "
                            "<image_dir>/<split>/<class>/<image>)")
    if source == "tfds" and not data.tfds_data_dir:
        problems.append("data.tfds_data_dir is empty: name the tfds data_dir of "
                        "imagenet2012 (with data.manual_dir holding the ImageNet tars when "
                        "it is not prepared yet)")
    if source == "tfds" and mode == "extract":
        unknown = [s for s in data.extract_splits if s not in TFDS_SPLITS]
        if unknown:
            problems.append(f"data.extract_splits names {unknown}, which tfds imagenet2012 "
                            f"does not have; its splits are {', '.join(map(repr, TFDS_SPLITS))}")
    return problems


def embedded_image_shape(data: DataConfig) -> tuple[int, int, int] | None:
    """`(H, W, C)` of an embedded dataset's images; None for code datasets."""
    if data.name == "digits":
        return (8, 8, 1)
    if data.name == "shapes":
        return (data.size, data.size, 1)
    return None


def tokenizer_fit_problems(data: DataConfig, tokenizer_name: str, image_size: tuple[int, ...],
                           channels: int) -> list[str]:
    """An embedded dataset is tokenized on the fly: the tokenizer must read its images,
    which are grey, so only the intensity tokenizer can (a VQ tokenizer reads RGB)."""
    shape = embedded_image_shape(data)
    if shape is None:
        return []
    if tokenizer_name != "intensity":
        return [f"tokenizer.name={tokenizer_name!r} reads RGB images, but the {data.name} "
                f"images (data.name={data.name!r}) are grey and tokenized on the fly; set "
                f"tokenizer.name='intensity' with image_size={shape[:2]} and channels=1"]
    if (tuple(image_size), channels) == (shape[:2], shape[2]):
        return []
    return [f"tokenizer.image_size must be {shape[:2]} with channels=1 for the grey "
            f"{data.name} (data.name={data.name!r}), got {tuple(image_size)} with "
            f"channels={channels}"]
