"""Image datasets for offline code extraction: a class-per-folder tree and tfds ImageNet.

Both sources give random access to `{"image": uint8 [H, W, 3], "label": int, "path": str}`
so that the extraction step (`lasad_jax.data.extract`) can walk them in a fixed order and
resume mid-way. Images are decoded here, with Pillow, for both sources: the same decoder
and the same ADM centre crop then produce the same pixels whichever way ImageNet was
stored. A file that cannot be decoded raises `CorruptImageError` naming it; the caller
decides whether to stop or to skip and count it, so a label is never silently shifted.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from lasad_jax.data.config import IMAGE_SOURCES, TFDS_SPLITS
from lasad_jax.files import tensorflow

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}

Item = dict[str, Any]


class CorruptImageError(ValueError):
    """An image file (or record) that Pillow cannot decode; the message names it."""


def _decode(data: bytes | str | os.PathLike, name: str) -> np.ndarray:
    """Decodes to RGB uint8 `[H, W, 3]`; any decoder failure names the file."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()  # force a full decode now: truncated files fail here, not later
            return np.asarray(img.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptImageError(
            f"cannot decode image {name}: {type(e).__name__}: {e}; replace or delete the file "
            "(--mode=extract can skip such files and count them in its manifest: "
            "data.skip_corrupt=True)"
        ) from e


def adm_center_crop(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """ADM's centre crop (guided-diffusion, as used by LlamaGen), as uint8 `[size, size, 3]`.

    Halving with a BOX filter while the short side is at least `2 * size` keeps large
    downscales from aliasing (bicubic alone would skip most source pixels); one bicubic
    resize then brings the short side to `size` and the centre square is cut out.
    Reproducing it exactly keeps our codes comparable with LlamaGen's and ADM's FID
    reference statistics.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = img.convert("RGB")
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img, np.uint8)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


class ImageFolderSource:
    """`root/<class_name>/<image>` (jpg/jpeg/png, any case), ImageNet's usual layout.

    Classes sorted by name become labels 0..K-1 and files are sorted within a class, so
    the index -> (file, label) map depends only on the tree; sorted synset ids give the
    same labels as tfds `imagenet2012` and torchvision's ImageFolder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {str(self.root)!r} does not exist; it must hold one "
                "sub-directory per class with the images inside (root/<class>/<image>.jpg)"
            )
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not class_dirs:
            raise FileNotFoundError(
                f"image folder {str(self.root)!r} holds no class sub-directories; expected "
                "root/<class>/<image>.jpg"
            )
        self.class_names: list[str] = [p.name for p in class_dirs]
        self.paths: list[pathlib.Path] = []
        self._sizes: list[int] = []  # bytes per file, from the listing's one stat each
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            found = sorted((entry.name, entry.stat().st_size) for entry in os.scandir(class_dir)
                           if entry.is_file()
                           and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)
            files = [class_dir / name for name, _ in found]
            self._sizes.extend(size for _, size in found)
            if not files:
                raise FileNotFoundError(
                    f"class directory {str(class_dir)!r} holds no images with extensions "
                    f"{', '.join(IMAGE_EXTENSIONS)} (any case); add images or remove it"
                )
            self.paths.extend(files)
            labels.extend([label] * len(files))
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Which images, in which order: a digest of each file's path below the root
        and its size in bytes. Extraction records it, so a resumed or repeated run over
        another tree (or a tree whose files changed) is refused instead of mixing two
        datasets' codes; the same tree moved to another disk keeps it. The sizes come
        from the listing: no file is read or stat'ed again."""
        digest = hashlib.sha256()
        for path, size in zip(self.paths, self._sizes):
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{size}\n".encode())
        return "sha256:" + digest.hexdigest()

    def __repr__(self) -> str:
        return (f"ImageFolderSource(root={str(self.root)!r}, images={len(self)}, "
                f"classes={len(self.class_names)})")

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index]
        return {"image": _decode(path, str(path)), "label": int(self.labels[index]),
                "path": str(path)}


def _missing_tars_message(data_dir: str, manual_dir: str, split: str, missing: str) -> str:
    return (
        f"tfds imagenet2012 is not prepared under data_dir {data_dir!r} and {missing}. "
        "ImageNet needs a manual download: get ILSVRC2012_img_train.tar (the train split) "
        "and ILSVRC2012_img_val.tar (the validation split) from "
        f"https://image-net.org/download-images and put them in {manual_dir!r}; then prepare "
        "them once (hours; needs ~300 GB free) with\n"
        f"    tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual_dir} "
        "--file_format=array_record\n"
        "or re-run this command, which prepares them the same way."
    )


class TfdsImagenetSource:
    """tfds `imagenet2012` as a random-access source (array_record files).

    tfds prepares ImageNet from the two tars the user downloads; the prepared array_record
    files give random access without TensorFlow's input pipeline. Images are read as raw
    JPEG bytes and decoded with Pillow, as `ImageFolderSource` does.
    """

    def __init__(self, split: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike = "",
                 *, prepare: bool = True):
        tensorflow()  # tfds runs TensorFlow: kept off the GPUs before it does
        import tensorflow_datasets as tfds  # heavy: only this source needs TensorFlow

        if split not in TFDS_SPLITS:
            raise ValueError(f"split must be one of {', '.join(TFDS_SPLITS)}; got {split!r}")
        if not data_dir:
            raise ValueError("data_dir (config.data.tfds_data_dir) must name the tfds data "
                             "directory, e.g. ~/tensorflow_datasets; got an empty value")
        self.split = TFDS_SPLITS[split]
        data_dir = os.path.expanduser(str(data_dir))
        manual_dir = os.path.expanduser(str(manual_dir or os.path.join(data_dir, "downloads",
                                                                       "manual")))
        builder = tfds.builder("imagenet2012", data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            tar = os.path.join(manual_dir, IMAGENET_TARS[self.split])
            if not os.path.isfile(tar):
                raise FileNotFoundError(_missing_tars_message(
                    data_dir, manual_dir, self.split, f"{tar!r} does not exist"))
            if not prepare:
                raise FileNotFoundError(_missing_tars_message(
                    data_dir, manual_dir, self.split, "prepare=False"))
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
                file_format="array_record",
            )
        if builder.info.splits and self.split not in builder.info.splits:
            raise FileNotFoundError(
                f"tfds imagenet2012 under {data_dir!r} was prepared without the {self.split!r} "
                f"split ({IMAGENET_TARS[self.split]} was missing then); put it in "
                f"{manual_dir!r} and prepare again in a fresh data_dir")
        self.class_names: list[str] = list(builder.info.features["label"].names)
        self._data = builder.as_data_source(
            self.split, decoders={"image": tfds.decode.SkipDecoding()})
        self.data_dir = data_dir
        # Which images, for extraction's manifest: the prepared dataset's version, split
        # and size (the records themselves are fixed by the version).
        self.fingerprint = (f"tfds:imagenet2012/{builder.info.version}/{self.split}/"
                            f"{len(self._data)}")

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return (f"TfdsImagenetSource(split={self.split!r}, data_dir={self.data_dir!r}, "
                f"images={len(self)})")

    def __getitem__(self, index: int) -> Item:
        record = self._data[index]
        name = record.get("file_name", "")
        name = name.item() if isinstance(name, np.ndarray) else name
        name = name.decode() if isinstance(name, bytes) else str(name)
        where = f"{name or '?'} (record {index} of tfds imagenet2012/{self.split})"
        return {"image": _decode(bytes(record["image"]), where), "label": int(record["label"]),
                "path": where}


def build_image_source(kind: str, split: str, *, image_dir: str = "", tfds_data_dir: str = "",
                       manual_dir: str = "") -> ImageFolderSource | TfdsImagenetSource:
    """The image source `kind` ("imagefolder" or "tfds") for `split` ("train"/"val").

    "imagefolder" reads `<image_dir>/<split>/<class>/<image>`; "tfds" reads tfds
    imagenet2012 from `tfds_data_dir`, preparing it from `manual_dir` when needed.
    """
    if kind not in IMAGE_SOURCES:
        raise ValueError(f"config.data.image_source must be one of "
                         f"{', '.join(IMAGE_SOURCES)}; got {kind!r}")
    if kind == "imagefolder":
        if not image_dir:
            raise ValueError("config.data.image_dir must name a directory holding "
                             "<split>/<class>/<image> files; got an empty value")
        return ImageFolderSource(os.path.join(os.path.expanduser(str(image_dir)), split))
    return TfdsImagenetSource(split, tfds_data_dir, manual_dir)
