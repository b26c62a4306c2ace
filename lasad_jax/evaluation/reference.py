"""Reference batches and statistics: reading ADM's `.npz` files and writing our own.

Two kinds of file are read, both `.npz`:
  * an ADM reference batch (`VIRTUAL_imagenet256_labeled.npz`, ADM_REFERENCE_URL): `arr_0`
    uint8 [10000, 256, 256, 3] plus the precomputed `mu`, `sigma` (pool_3, 2048-d) and
    `mu_s`, `sigma_s` (sFID spatial features, 2023-d) of the TF Inception graph;
  * a stats-only file written by `write_reference` (our `--mode=reference_stats` run over a
    dataset): the same four statistics, optionally `pool` (pool features of a subset of the
    images, for precision/recall), and `preprocess`/`num_images` records.
A sample batch (`arr_0` only) also loads; its statistics are then computed from its images.

Images are never loaded whole: `iter_npz_batches` streams `arr_0` from the zip member
batch by batch (50k samples at 256x256 are 9.8 GB), as ADM's evaluator does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np

from lasad_jax.evaluation.inception import POOL_DIM, PREPROCESS_MODES, SPATIAL_DIM
from lasad_jax.files import save_npz

ADM_REFERENCE_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
                     "ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz")
STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
IMAGES_KEY = "arr_0"
_DIMS = {"mu": POOL_DIM, "sigma": POOL_DIM, "mu_s": SPATIAL_DIM, "sigma_s": SPATIAL_DIM}


@dataclasses.dataclass(frozen=True)
class Reference:
    """What one reference file offers. `mu`... are None only when the file holds just
    images (`images_shape` set); `pool` is None unless the file carries pool features.
    `preprocess` is the Inception preprocessing its statistics were made with: recorded in
    our files, "adm" for ADM batches (made by the TF graph), None when unknown or when the
    file holds no statistics (images alone are scored with the run's own network)."""

    path: str
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pool: np.ndarray | None = None
    images_shape: tuple[int, ...] | None = None
    preprocess: str | None = None
    inception: str | None = None  # which network made the statistics, when recorded
    # What made our statistics (`--mode=reference_stats`: dataset, split, image size,
    # tokenizer fingerprint, network); None for other files.
    settings: dict[str, Any] | None = None
    # The file's content (`content_digest`): results scored against it record it, so a
    # file replaced under the same path does not pass for the one they were scored with.
    digest: str | None = None

    @property
    def has_stats(self) -> bool:
        return self.mu is not None

    def image_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The file's `arr_0` images, streamed in batches (ValueError if it has none)."""
        if self.images_shape is None:
            raise ValueError(f"{self.path}: holds statistics only, no {IMAGES_KEY!r} images")
        return iter_npz_batches(self.path, batch_size)


def _check_stats(stats: Mapping[str, Any], source: str) -> None:
    """Shapes of the four statistics and the optional pool features; ValueError listing all."""
    problems = []
    for key, dim in _DIMS.items():
        want = (dim,) if key.startswith("mu") else (dim, dim)
        got = tuple(np.shape(stats[key]))
        if got != want:
            problems.append(f"{key}: expected shape {want}, got {got}")
    if stats.get("pool") is not None:
        shape = tuple(np.shape(stats["pool"]))
        if len(shape) != 2 or shape[1] != POOL_DIM or shape[0] < 2:
            problems.append(f"pool: expected shape [N >= 2, {POOL_DIM}], got {shape}")
    if problems:
        raise ValueError(f"{source}: statistics have the wrong shapes (expected the FID "
                         "Inception's pool_3 and sFID features):\n  - " + "\n  - ".join(problems))


def reference_path(reference: str, workdir: str) -> str:
    """The reference a run scores against: `eval.reference`, or the statistics
    `--mode=reference_stats` wrote into the workdir when that is empty."""
    return reference or os.path.join(workdir, "reference_stats.npz")


def content_digest(path: str | os.PathLike) -> str:
    """`sha256:` of an `.npz`'s members as its zip directory lists them: each member's name,
    size and CRC-32. Any change to an array changes it, yet nothing is read beyond the
    directory (ADM's 256 px batch is 2 GB)."""
    with zipfile.ZipFile(os.fspath(path)) as zf:
        members = sorted((i.filename, i.file_size, i.CRC) for i in zf.infolist())
    return "sha256:" + hashlib.sha256(json.dumps(members).encode()).hexdigest()


def load_reference(path: str | os.PathLike) -> Reference:
    """Reads an ADM reference batch, a stats-only file or an images-only sample batch."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"reference file {path!r} does not exist; for ImageNet 256 download ADM's "
            f"reference batch {ADM_REFERENCE_URL}, or write statistics of a dataset with "
            "lasad_jax.evaluation.reference_statistics + write_reference")
    if not zipfile.is_zipfile(path):  # a single .npy array, a pickle, anything else
        raise ValueError(f"{path} is not an .npz file (a zip archive) with keys {STATS_KEYS} "
                         f"or {IMAGES_KEY!r}: give an ADM reference batch or statistics "
                         "written by --mode=reference_stats")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path!r} is not a readable .npz file: {err}") from err
    with npz:
        keys = set(npz.files)
        present = [k for k in STATS_KEYS if k in keys]
        has_images = IMAGES_KEY in keys
        if present and len(present) < len(STATS_KEYS):
            missing = [k for k in STATS_KEYS if k not in keys]
            raise ValueError(f"{path}: has statistics {present} but lacks {missing}; a "
                             f"reference needs all of {list(STATS_KEYS)}")
        if not present and not has_images:
            raise ValueError(f"{path}: missing keys {list(STATS_KEYS)} (statistics) and "
                             f"{IMAGES_KEY!r} (images), needs one or the other; has "
                             f"{sorted(keys)}")
        stats = {k: np.asarray(npz[k], np.float64) for k in present}
        if "pool" in keys:
            stats["pool"] = np.asarray(npz["pool"], np.float32)
        recorded = str(npz["preprocess"]) if "preprocess" in keys else None
        network = str(npz["inception"]) if "inception" in keys else None
        settings = json.loads(str(npz["settings"])) if "settings" in keys else None
    if present:
        _check_stats(stats, path)
        if stats["mu_s"].min() < -1e-6:
            # Our `spatial` features follow a ReLU, so their means are >= 0; negative means
            # say the file's sFID features were taken before the ReLU.
            warnings.warn(f"{path}: mu_s has negative entries (min {stats['mu_s'].min():.3g}); "
                          "InceptionV3's sFID features are post-ReLU, so sFID against this "
                          "file is not comparable", stacklevel=2)
    images_shape = None
    if has_images:
        with _open_npy_member(path, IMAGES_KEY) as (_, shape, _fortran, _dtype):
            images_shape = tuple(shape)
        if len(images_shape) != 4 or images_shape[-1] != 3:
            raise ValueError(f"{path}: {IMAGES_KEY!r} has shape {images_shape}, expected "
                             "images [N, H, W, 3]")
    # A file with images and statistics but no record is an ADM batch (the TF graph's
    # preprocessing); images alone carry no statistics, so no preprocessing to agree with.
    preprocess = recorded if recorded is not None else (
        "adm" if present and has_images else None)
    return Reference(path=path, images_shape=images_shape, preprocess=preprocess,
                     inception=network, settings=settings, digest=content_digest(path),
                     **{k: stats.get(k) for k in (*STATS_KEYS, "pool")})


def write_reference(path: str | os.PathLike, stats: Mapping[str, Any]) -> None:
    """Writes a stats-only reference (`mu`, `sigma`, `mu_s`, `sigma_s`, optional `pool`,
    `preprocess`, `num_images`, `inception`: a description of the network, `settings`:
    a dict of what made it) to exactly `path`, atomically, after checking the shapes."""
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise ValueError(f"statistics for {os.fspath(path)!r} lack {missing}")
    _check_stats(stats, os.fspath(path))
    arrays = {k: np.asarray(stats[k], np.float64) for k in STATS_KEYS}
    if stats.get("pool") is not None:
        arrays["pool"] = np.asarray(stats["pool"], np.float32)
    if stats.get("preprocess") is not None:
        if stats["preprocess"] not in PREPROCESS_MODES:
            raise ValueError(f"preprocess {stats['preprocess']!r} is not one of "
                             f"{PREPROCESS_MODES}")
        arrays["preprocess"] = np.asarray(str(stats["preprocess"]))
    if stats.get("num_images") is not None:
        arrays["num_images"] = np.asarray(int(stats["num_images"]))
    if stats.get("inception") is not None:
        arrays["inception"] = np.asarray(str(stats["inception"]))
    if stats.get("settings") is not None:
        arrays["settings"] = np.asarray(json.dumps(stats["settings"], sort_keys=True))
    save_npz(path, **arrays)


@contextlib.contextmanager
def _open_npy_member(path: str, key: str) -> Iterator[tuple[IO[bytes], tuple, bool, np.dtype]]:
    """The open `.npy` member `key` of an npz, positioned after its header."""
    with zipfile.ZipFile(path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            raise ValueError(f"{path}: no array {key!r} (members: {sorted(zf.namelist())})")
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{path}: {key!r} uses .npy format {version}, expected 1.0/2.0")
            yield f, shape, fortran, dtype


def _read_exactly(f: IO[bytes], size: int, source: str) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = f.read(size - got)
        if not chunk:
            raise ValueError(f"{source}: file ends after {got} of {size} bytes (truncated?)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def iter_npz_batches(path: str | os.PathLike, batch_size: int,
                     key: str = IMAGES_KEY) -> Iterator[np.ndarray]:
    """Streams array `key` of an `.npz` in batches of `batch_size` along axis 0 (the last
    may be shorter); memory stays at one batch. Fortran-ordered or object arrays, which
    cannot be streamed, are loaded whole."""
    path = os.fspath(path)
    with _open_npy_member(path, key) as (f, shape, fortran, dtype):
        if fortran or dtype.hasobject:
            streamable = False
        else:
            streamable = True
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - start)
                data = _read_exactly(f, n * row_bytes, f"{path}[{key}]")
                yield np.frombuffer(data, dtype).reshape((n, *shape[1:]))
    if not streamable:
        with np.load(path) as npz:
            arr = npz[key]
        for start in range(0, len(arr), batch_size):
            yield arr[start:start + batch_size]


def npz_array_shape(path: str | os.PathLike, key: str = IMAGES_KEY) -> tuple[int, ...]:
    """Shape of array `key` in an `.npz`, read from its header without loading it."""
    with _open_npy_member(os.fspath(path), key) as (_, shape, _fortran, _dtype):
        return tuple(shape)
