"""Converts LlamaGen's public VQ-16 checkpoint (`vq_ds16_c2i.pt`) to this package's format.

    python -m lasad_jax.convert.llamagen_vq --checkpoint vq_ds16_c2i.pt --out DIR

Download `vq_ds16_c2i.pt` yourself (linked from LlamaGen's README,
https://github.com/FoundationVision/LlamaGen); only this conversion step needs torch
(`pip install torch --index-url https://download.pytorch.org/whl/cpu`). The result, DIR
with `vq_params.npz` and `vq_config.json`, loads with
`lasad_jax.tokenizers.vq.weights.load_vq(DIR)` using numpy alone.

Rules, all checked rather than assumed:
  * every parameter path of `VQModel` has exactly one key: path parts joined by '.', with
    `kernel` and `scale` -> `weight`, and the codebook `quantize.embedding` ->
    `quantize.embedding.weight`;
  * conv kernels are transposed OIHW -> HWIO;
  * `quantize.codebook_used` (a rolling buffer of recently used codes, training
    bookkeeping, not a weight) is the only key dropped; any other unused key, any missing
    key and any shape mismatch is an error listing all of them;
  * the codebook is stored l2-normalised row by row (x / max(|x|, 1e-12)), which is what
    LlamaGen's quantizer uses at every lookup. The model normalises again at lookup, which
    leaves unit rows unchanged, so codes and images equal the original's either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
from flax import nnx

from lasad_jax.convert import torch_io
from lasad_jax.convert.cli import refuse_existing, run
from lasad_jax.tokenizers.vq import VQConfig, abstract_model
from lasad_jax.tokenizers.vq.weights import (
    CONFIG_FILE,
    PARAMS_FILE,
    fill_state,
    flat_params,
    save_vq,
)

DROPPED_KEYS = ("quantize.codebook_used",)


def read_torch_state_dict(path: str, entry: str = "model") -> dict[str, np.ndarray]:
    """LlamaGen's checkpoint as float32 numpy arrays keyed by state-dict name, read by
    `torch_io` (no code in the file runs). LlamaGen saves `{"model": state_dict, ...}`;
    `entry` picks the sub-dict (a bare state dict is accepted too)."""
    return torch_io.read_torch_state_dict(
        path, expected="LlamaGen's VQ checkpoint vq_ds16_c2i.pt",
        where_to_get="download vq_ds16_c2i.pt from LlamaGen's README", entry=entry)


def torch_key(path: tuple[Any, ...]) -> str:
    """The LlamaGen state-dict key of one NNX parameter path."""
    *parents, leaf = (str(p) for p in path)
    if tuple(parents) == ("quantize",) and leaf == "embedding":
        return "quantize.embedding.weight"
    names = {"kernel": "weight", "scale": "weight", "bias": "bias"}
    if leaf not in names:
        raise ValueError(f"parameter path {'.'.join(map(str, path))} has no checkpoint rule "
                         f"(leaf must be one of {sorted(names)} or quantize.embedding)")
    return ".".join([*parents, names[leaf]])


def _to_torch_shape(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    return tuple(shape)


def _from_torch(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel":
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if path == ("quantize", "embedding"):
        norm = np.sqrt(np.sum(value.astype(np.float64) ** 2, axis=1, keepdims=True))
        return (value / np.maximum(norm, 1e-12)).astype(np.float32)
    return value


def expected_keys(cfg: VQConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key `convert` consumes for `cfg`, with its PyTorch shape."""
    return {torch_key(p): _to_torch_shape(p, s) for p, s in flat_params(abstract_model(cfg))}


def convert(state_dict: dict[str, np.ndarray], cfg: VQConfig) -> nnx.State:
    """LlamaGen VQ state dict -> the `nnx.State` of `VQModel(cfg)` (parameters only).

    Raises ValueError listing every missing key, unknown key and shape mismatch at once.
    """
    model = abstract_model(cfg)
    abstract = nnx.state(model, nnx.Param)
    params = list(flat_params(model))
    problems: list[str] = []
    wanted = {torch_key(p) for p, _ in params}
    missing = sorted(wanted - set(state_dict))
    unknown = sorted(set(state_dict) - wanted - set(DROPPED_KEYS))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unknown:
        problems.append(f"unknown keys, not used by VQModel ({len(unknown)}): {unknown}")
    for path, shape in params:
        key = torch_key(path)
        if key in state_dict:
            want, got = _to_torch_shape(path, shape), tuple(np.shape(state_dict[key]))
            if want != got:
                problems.append(f"shape of {key}: expected {want}, got {got}")
    if problems:  # checked before any array is copied, so a bad file fails fast and cheaply
        raise ValueError(f"state dict does not match VQModel({cfg}):\n  - "
                         + "\n  - ".join(problems))
    # A generator, so each converted array becomes a device array before the next is made.
    values = ((path, _from_torch(path, state_dict[torch_key(path)])) for path, _ in params)
    return fill_state(abstract, values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="path to vq_ds16_c2i.pt")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--entry", default="model", help="checkpoint sub-dict (default: model)")
    args = parser.parse_args(argv)
    refuse_existing(*(os.path.join(args.out, name) for name in (PARAMS_FILE, CONFIG_FILE)))
    cfg = VQConfig()
    print(f"reading {args.checkpoint} ...", flush=True)
    sd = read_torch_state_dict(args.checkpoint, args.entry)
    print(f"converting {len(sd)} keys to VQModel (VQ-16) ...", flush=True)
    state = convert(sd, cfg)
    n_params = sum(int(np.size(v[...])) for _, v in nnx.to_flat_state(state))
    dropped = [k for k in DROPPED_KEYS if k in sd]
    save_vq(args.out, state, cfg)
    print(f"keys: {len(sd)} read, {len(sd) - len(dropped)} converted, {len(dropped)} dropped "
          f"({', '.join(dropped) or 'none'}); {n_params:,} parameters "
          f"({n_params / 1e6:.1f}M); wrote {os.path.join(args.out, PARAMS_FILE)} and "
          f"{CONFIG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
