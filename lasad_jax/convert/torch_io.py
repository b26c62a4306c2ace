"""Reading PyTorch `.pth` state dicts: the one place the converters touch torch.

torch is an optional dependency (`pip install -e ".[convert]"`): conversion runs once,
offline, and writes `.npz` files that load without it. Files are read with
`weights_only=True`, so a checkpoint cannot run code while it is being read.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np

INSTALL_HINT = ("reading .pth files needs PyTorch, which lasad_jax does not otherwise use: "
                "`pip install torch --index-url https://download.pytorch.org/whl/cpu`, run "
                "the conversion once, and use the .npz it writes (no torch needed after)")


def read_torch_state_dict(path: str | os.PathLike, *, expected: str,
                          where_to_get: str | None = None) -> dict[str, np.ndarray]:
    """Float32 numpy arrays of the tensors in the state dict at `path` (also accepted:
    a dict holding it under `"state_dict"`). `expected` names the file in errors;
    `where_to_get`, when given, is added to the message for a missing file."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    name = os.fspath(path)
    if not os.path.isfile(name):
        hint = f"; {where_to_get}" if where_to_get else ""
        raise FileNotFoundError(f"{name!r} does not exist (expected {expected}){hint}")
    try:
        state = torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{name!r} holds Python objects besides tensors; expected "
                         f"{expected}") from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise TypeError(f"{name}: expected a state dict (name -> tensor), got {type(state)}")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}
