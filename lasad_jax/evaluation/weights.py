"""The FID Inception network's weights: the `.npz` file it loads from, and the choice a
config makes (`eval.inception`: that file, or "random" weights to test the pipeline).

The file holds one array per variable ('/'-joined path) plus a format record; it is
written once from pytorch-fid's `.pth` by `python -m lasad_jax.convert.inception`.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping

import numpy as np
from absl import logging
from flax import nnx

from lasad_jax.evaluation.inception import (
    InceptionV3,
    Path,
    PreprocessMode,
    inception_from_arrays,
    random_inception,
)
from lasad_jax.evaluation.reference import content_digest
from lasad_jax.files import save_npz

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
CONVERT_COMMAND = (f"python -m lasad_jax.convert.inception --torch_weights={WEIGHTS_FILE} "
                   "--out=inception_fid.npz")
FORMAT_KEY = "__format__"
FORMAT_VERSION = 1
RANDOM_INCEPTION = "random"


def _flat_arrays(params: Mapping[Path, np.ndarray] | InceptionV3) -> dict[Path, np.ndarray]:
    if isinstance(params, InceptionV3):
        return {tuple(str(p) for p in path): np.asarray(var[...])
                for path, var in nnx.to_flat_state(nnx.state(params))}
    return {tuple(path): np.asarray(v, np.float32) for path, v in params.items()}


def save_inception(path: str | os.PathLike,
                   params: Mapping[Path, np.ndarray] | InceptionV3) -> None:
    """Writes one array per variable ('/'-joined path) plus a format record, to exactly
    `path` (np.savez would append `.npz` to a bare name), uncompressed for fast loading."""
    arrays = {"/".join(p): v for p, v in _flat_arrays(params).items()}
    meta = {"format_version": FORMAT_VERSION, "source": f"pytorch-fid {WEIGHTS_FILE}"}
    arrays[FORMAT_KEY] = np.asarray(json.dumps(meta))
    save_npz(path, **arrays)


def load_inception(path: str | os.PathLike, preprocess: PreprocessMode = "adm") -> InceptionV3:
    """Loads a file written by `save_inception` (numpy and JAX only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights {os.fspath(path)!r} not found. Download {WEIGHTS_URL} and "
            f"convert it once: python -m lasad_jax.convert.inception "
            f"--torch_weights={WEIGHTS_FILE} --out={os.fspath(path)}")
    # A pickle, a bare .npy or the unconverted .pth would otherwise get numpy's advice to
    # load it with allow_pickle, which is neither safe nor the fix.
    def refuse(what: str) -> ValueError:
        return ValueError(f"eval.inception={os.fspath(path)!r} {what}; it must be the .npz "
                          f"that `{CONVERT_COMMAND}` writes")

    if not zipfile.is_zipfile(path):
        raise refuse("is not an .npz file (a zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as err:
        raise refuse(f"is not a readable zip archive ({err})") from err
    if any(name.endswith("data.pkl") for name in names):
        raise refuse("is a PyTorch checkpoint, not converted weights")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except (OSError, zipfile.BadZipFile) as err:
        raise refuse(f"is not a readable .npz file ({err})") from err
    except ValueError as err:  # object arrays: pickled data
        raise refuse("holds pickled objects, not arrays") from err
    if FORMAT_KEY not in stored:
        raise ValueError(f"{os.fspath(path)}: no {FORMAT_KEY!r} record; not written by "
                         "save_inception (convert the .pth with python -m "
                         "lasad_jax.convert.inception)")
    meta = json.loads(str(stored.pop(FORMAT_KEY)))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{os.fspath(path)}: format_version {meta.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION}")
    arrays = {tuple(k.split("/")): v for k, v in stored.items()}
    return inception_from_arrays(arrays, preprocess, source=os.fspath(path))


def describe_network(path: str) -> str:
    """How results and reference statistics name the network of `eval.inception`."""
    if path == RANDOM_INCEPTION:
        return "random weights (seed 0): not comparable"
    return os.path.abspath(path)


def network_digest(path: str) -> str | None:
    """The content of the network file of `eval.inception` (`content_digest`), None for
    random weights. Reference statistics and scores record it beside the path, which
    alone cannot tell two weight files apart (nor one replaced by another)."""
    if path == RANDOM_INCEPTION:
        return None
    try:
        return content_digest(path)
    except (OSError, zipfile.BadZipFile):
        load_inception(path)  # says what the file is instead (no zip, a .pth, ...)
        raise


def load_network(path: str, preprocess: PreprocessMode = "adm") -> tuple[InceptionV3, str]:
    """The Inception network of `eval.inception` (a file, or "random") and how results
    describe it: random weights make numbers that compare only with each other."""
    if path == RANDOM_INCEPTION:
        logging.warning("eval.inception='random': Inception with random weights; the "
                        "numbers test the pipeline and are NOT comparable to published FIDs")
        return random_inception(0, preprocess), describe_network(path)
    return load_inception(path, preprocess), describe_network(path)
