"""Converts pytorch-fid's FID Inception weights to the `.npz` that
`lasad_jax.evaluation.weights.load_inception` reads.

    python -m lasad_jax.convert.inception \
        --torch_weights=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

Download the weights yourself (this project never fetches files):
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(the 2015 TF Inception graph that ADM's evaluator runs, ported to PyTorch; torch-fidelity
distributes the same weights). Only reading the `.pth` needs torch (`pip install -e .[convert]`
or the CPU wheel); `convert_state_dict` works on any mapping of numpy arrays, so it is
tested without torch, and loading the result needs numpy and JAX only.

Rules, all checked rather than assumed:
  * every variable of `InceptionV3` has exactly one key: the module path joined by '.',
    with the leaf renamed `kernel`/`scale` -> `weight`, `mean` -> `running_mean`,
    `var` -> `running_var` (`bias` stays): `Mixed_6d.branch1x1.bn.running_var`;
  * conv kernels are transposed OIHW -> HWIO, `fc.weight` [1008, 2048] -> [2048, 1008];
  * `*.bn.num_batches_tracked` (a training counter, present in files saved by newer
    torch) is the only key dropped; any other unused key, any missing key and any shape
    mismatch is an error listing all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasad_jax.convert import torch_io
from lasad_jax.convert.cli import refuse_existing, run
from lasad_jax.evaluation.inception import Path, expected_shapes
from lasad_jax.evaluation.weights import WEIGHTS_FILE, WEIGHTS_URL, save_inception

DROPPED_SUFFIX = ".num_batches_tracked"
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}


def torch_key(path: Path) -> str:
    """The pytorch-fid state-dict key of one `InceptionV3` variable path."""
    *parents, leaf = path
    if leaf not in _LEAF_TO_TORCH:
        raise ValueError(f"variable {'/'.join(path)} has no state-dict rule (leaf must be one "
                         f"of {sorted(_LEAF_TO_TORCH)})")
    return ".".join([*parents, _LEAF_TO_TORCH[leaf]])


def torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a variable whose JAX shape is `shape`."""
    if path[-1] == "kernel" and len(shape) == 4:
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    if path[-1] == "kernel":
        return tuple(reversed(shape))
    return tuple(shape)


def from_torch(path: Path, value: np.ndarray) -> np.ndarray:
    """One state-dict array -> the JAX layout of variable `path` (float32)."""
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel" and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel":
        return np.ascontiguousarray(value.T)  # Linear [out, in] -> [in, out]
    return value


def expected_keys() -> dict[str, tuple[int, ...]]:
    """Every state-dict key `convert_state_dict` consumes, with its PyTorch shape."""
    return {torch_key(p): torch_shape(p, s) for p, s in expected_shapes().items()}


def convert_state_dict(state_dict: Mapping[str, Any],
                       source: str = "state dict") -> dict[Path, np.ndarray]:
    """pytorch-fid state dict (name -> array) -> {variable path: float32 array} for
    `InceptionV3` (build it with `inception_from_arrays`, save it with `save_inception`).

    Raises ValueError listing every missing key, unknown key and shape mismatch at once.
    """
    shapes = expected_shapes()
    keys = {torch_key(p): p for p in shapes}
    missing = sorted(set(keys) - set(state_dict))
    unknown = sorted(k for k in set(state_dict) - set(keys) if not k.endswith(DROPPED_SUFFIX))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unknown:
        problems.append(f"unknown keys, not used by InceptionV3 ({len(unknown)}): {unknown}")
    for key, path in keys.items():
        if key in state_dict:
            want, got = torch_shape(path, shapes[path]), tuple(np.shape(state_dict[key]))
            if want != got:
                problems.append(f"shape of {key}: expected {want}, got {got}")
    if problems:
        raise ValueError(f"{source} is not pytorch-fid's FID Inception ({WEIGHTS_FILE}):\n  - "
                         + "\n  - ".join(problems))
    return {path: from_torch(path, state_dict[key]) for key, path in keys.items()}


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """pytorch-fid's `.pth` as numpy arrays (needs torch; see `convert/torch_io.py`)."""
    return torch_io.read_torch_state_dict(
        path, expected=f"pytorch-fid's plain state dict {WEIGHTS_FILE}",
        where_to_get=f"download {WEIGHTS_URL}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch_weights", required=True, help=f"path to {WEIGHTS_FILE}")
    parser.add_argument("--out", required=True, help="output .npz (e.g. inception_fid.npz)")
    args = parser.parse_args(argv)
    refuse_existing(args.out)
    state = read_torch_state_dict(args.torch_weights)
    params = convert_state_dict(state, source=args.torch_weights)
    save_inception(args.out, params)
    dropped = sum(k.endswith(DROPPED_SUFFIX) for k in state)
    n = sum(v.size for v in params.values())
    print(f"keys: {len(state)} read, {len(params)} converted, {dropped} dropped "
          f"(*{DROPPED_SUFFIX}); {n:,} values; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
