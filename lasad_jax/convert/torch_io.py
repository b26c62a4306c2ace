"""Reading PyTorch `.pth` state dicts: the one place the converters touch torch (the
Inception, LPIPS and LlamaGen VQ converters all read through `read_torch_state_dict`).

torch is an optional dependency (`pip install -e ".[convert]"`): conversion runs once,
offline, and writes `.npz` files that load without it. Files are read with
`weights_only=True`, so a checkpoint cannot run code while it is being read.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

INSTALL_HINT = ("reading .pth files needs PyTorch (torch), which lasad_jax does not otherwise "
                "use: `pip install torch --index-url https://download.pytorch.org/whl/cpu`, "
                "run the conversion once, and use the .npz it writes (no torch needed after)")


def state_dict_of(loaded: Any, *, source: str, entry: str,
                  is_tensor: Callable[[Any], bool]) -> Mapping[str, Any]:
    """The state dict in what `torch.load` returned: `loaded` itself, or the mapping it
    holds under `entry` (training checkpoints wrap it with the optimizer and step).

    Every value must be a tensor: a value that is not one is refused, never dropped,
    because dropping it silently turns a wrapped state dict into an empty one, which the
    converters could only report as "missing keys"."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get(entry), Mapping):
        loaded = loaded[entry]
    if not isinstance(loaded, Mapping):
        raise TypeError(f"{source}: expected a state dict (name -> tensor) or a dict holding "
                        f"one under {entry!r}, got {type(loaded).__name__}")
    others = sorted(str(k) for k, v in loaded.items() if not is_tensor(v))
    if others:
        nested = [k for k in others if isinstance(loaded[k], Mapping) and loaded[k]
                  and all(is_tensor(v) for v in loaded[k].values())]
        hint = (f"; the state dict may be the one under {nested[0]!r}: read that entry "
                f"(entry={nested[0]!r})" if nested else "")
        shown = others[:8] + (["..."] if len(others) > 8 else [])
        raise ValueError(f"{source}: {len(others)} of its {len(loaded)} values are not "
                         f"tensors: {shown}{hint}")
    return loaded


def read_torch_state_dict(path: str | os.PathLike, *, expected: str,
                          where_to_get: str | None = None,
                          entry: str = "state_dict") -> dict[str, np.ndarray]:
    """Float32 numpy arrays of the tensors in the state dict at `path` (a bare state
    dict, or a dict holding it under `entry`; `state_dict_of`). `expected` names the file
    in errors; `where_to_get`, when given, is added to the message for a missing file."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    name = os.fspath(path)
    if not os.path.isfile(name):
        hint = f"; {where_to_get}" if where_to_get else ""
        raise FileNotFoundError(f"{name!r} does not exist (expected {expected}){hint}")
    try:
        loaded = torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{name!r} holds Python objects besides tensors; expected {expected}. "
            "weights_only loading refuses them (they could run code); if you trust the file, "
            "keep its state dict alone first: python -c \"import torch; torch.save("
            f"torch.load('IN', weights_only=False)[{entry!r}], 'OUT')\"") from err
    state = state_dict_of(loaded, source=name, entry=entry, is_tensor=torch.is_tensor)
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}
