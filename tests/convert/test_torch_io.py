"""The converters' one `.pth` reader: errors that say what to do, tensors as float32."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lasad_jax.convert import torch_io


def test_without_torch_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        torch_io.read_torch_state_dict(tmp_path / "w.pth", expected="a state dict")


def test_reads_tensors_and_names_bad_files(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(FileNotFoundError, match=r"w\.pth.*expected the FID weights.*get it"):
        torch_io.read_torch_state_dict(tmp_path / "w.pth", expected="the FID weights",
                                       where_to_get="get it here")
    torch.save({"state_dict": {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3),
                               "step": 3}}, tmp_path / "wrapped.pth")
    out = torch_io.read_torch_state_dict(tmp_path / "wrapped.pth", expected="x")
    assert list(out) == ["a"] and out["a"].dtype == np.float32  # non-tensors are dropped
    np.testing.assert_array_equal(out["a"], np.arange(6).reshape(2, 3))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(TypeError, match="expected a state dict"):
        torch_io.read_torch_state_dict(tmp_path / "list.pth", expected="x")
    torch.save({"obj": _Opaque()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="holds Python objects besides tensors; expected x"):
        torch_io.read_torch_state_dict(tmp_path / "code.pth", expected="x")


class _Opaque:
    """Any class: `weights_only=True` refuses to unpickle it."""
