"""The VQ tokenizer's weights on disk: a directory with `vq_params.npz` (one array per
parameter, '/'-joined path) and `vq_config.json` (the architecture), read with numpy
and JAX alone.

`save_vq` writes it (the tokenizer trainer's export, the LlamaGen converter's output);
`load_vq` reads it back into a `VQModel`, checking every array's name and shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lasad_jax.files import save_json, save_npz
from lasad_jax.tokenizers.vq.config import VQConfig
from lasad_jax.tokenizers.vq.model import VQModel, abstract_model

PARAMS_FILE = "vq_params.npz"
CONFIG_FILE = "vq_config.json"
FORMAT_VERSION = 1
CONVERT_COMMAND = ("python -m lasad_jax.convert.llamagen_vq --checkpoint vq_ds16_c2i.pt "
                   "--out DIR")


def flat_params(model: nnx.Module) -> Iterator[tuple[tuple[Any, ...], tuple[int, ...]]]:
    """(parameter path, shape) of every parameter of `model` (abstract or not)."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        yield tuple(path), tuple(var.shape)


def fill_state(abstract: nnx.State,
               values: Iterable[tuple[tuple[Any, ...], np.ndarray]]) -> nnx.State:
    """An `nnx.State` shaped like `abstract` holding `values` (pairs of flat path, array)."""
    pure: dict[Any, Any] = {}
    for path, value in values:
        node = pure
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    nnx.replace_by_pure_dict(abstract, pure)  # fills the freshly made abstract state
    return abstract


def save_vq(path_dir: str, state: nnx.State, cfg: VQConfig, *,
            source: str = "LlamaGen VQ (converted)") -> None:
    """Writes `vq_params.npz` (flat '/'-joined parameter paths) and `vq_config.json`
    (the architecture and `source`, where the weights come from)."""
    arrays = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}
    save_npz(os.path.join(path_dir, PARAMS_FILE), **arrays)
    meta = {"format_version": FORMAT_VERSION, "source": source, "config": cfg.to_dict()}
    save_json(os.path.join(path_dir, CONFIG_FILE), meta, indent=2)


def load_vq(path_dir: str) -> VQModel:
    """Loads a directory written by `save_vq` into a `VQModel` (numpy and JAX only)."""
    files = [os.path.join(path_dir, n) for n in (CONFIG_FILE, PARAMS_FILE)]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
        raise FileNotFoundError(
            f"VQ checkpoint directory {path_dir!r} lacks {absent}; create it with "
            f"`{CONVERT_COMMAND.replace('DIR', path_dir)}` (download vq_ds16_c2i.pt from "
            "LlamaGen's README first), or train one with a tokenizer config")
    with open(files[0]) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION or "config" not in meta:
        raise ValueError(f"{files[0]}: expected format_version {FORMAT_VERSION} and a "
                         f"'config' entry, got keys {sorted(meta)}")
    cfg = VQConfig.from_dict(meta["config"])
    model = abstract_model(cfg)
    graphdef, abstract = nnx.split(model)
    params = dict(flat_params(model))
    with np.load(files[1]) as npz:
        stored = {k: npz[k] for k in npz.files}
    by_name = {"/".join(map(str, p)): p for p in params}
    missing, unknown = sorted(set(by_name) - set(stored)), sorted(set(stored) - set(by_name))
    problems = [f"missing arrays: {missing}"] if missing else []
    if unknown:
        problems.append(f"unknown arrays: {unknown}")
    for name, path in by_name.items():
        if name in stored and stored[name].shape != params[path]:
            problems.append(f"shape of {name}: expected {params[path]}, got {stored[name].shape}")
    if problems:
        raise ValueError(f"{files[1]} does not match VQModel({cfg}):\n  - "
                         + "\n  - ".join(problems))
    state = fill_state(abstract, ((path, stored[name]) for name, path in by_name.items()))
    return nnx.merge(graphdef, state)
