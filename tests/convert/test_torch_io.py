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
    torch.save({"state_dict": {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3)},
                "step": 3}, tmp_path / "wrapped.pth")
    out = torch_io.read_torch_state_dict(tmp_path / "wrapped.pth", expected="x")
    assert list(out) == ["a"] and out["a"].dtype == np.float32
    np.testing.assert_array_equal(out["a"], np.arange(6).reshape(2, 3))
    torch.save({"model": {"a": torch.zeros(2)}, "step": 3}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match=r"2 of its 2 values are not tensors: \['model', "
                                         r"'step'\].*entry='model'"):
        torch_io.read_torch_state_dict(tmp_path / "nested.pth", expected="x")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(TypeError, match="expected a state dict"):
        torch_io.read_torch_state_dict(tmp_path / "list.pth", expected="x")
    torch.save({"obj": _Opaque()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="holds Python objects besides tensors; expected x"):
        torch_io.read_torch_state_dict(tmp_path / "code.pth", expected="x")


class _Tensor:
    """Stands in for a torch tensor where torch is absent."""


def _is_tensor(value) -> bool:
    return isinstance(value, _Tensor)


def test_the_state_dict_is_found_or_its_non_tensors_are_named():
    t = _Tensor()
    # A bare state dict, or one under the entry: returned as it is.
    assert torch_io.state_dict_of({"w": t}, source="f.pth", entry="state_dict",
                                  is_tensor=_is_tensor) == {"w": t}
    wrapped = {"model": {"w": t}, "steps": 7, "args": {"lr": 1.0}}
    assert torch_io.state_dict_of(wrapped, source="f.pth", entry="model",
                                  is_tensor=_is_tensor) == {"w": t}
    # Under another name: refused (it used to come back empty), naming the entry to read.
    with pytest.raises(ValueError) as err:
        torch_io.state_dict_of(wrapped, source="f.pth", entry="state_dict",
                               is_tensor=_is_tensor)
    assert str(err.value) == ("f.pth: 3 of its 3 values are not tensors: ['args', 'model', "
                              "'steps']; the state dict may be the one under 'model': read "
                              "that entry (entry='model')")
    # A stray value inside the state dict: named, not dropped.
    with pytest.raises(ValueError) as err:
        torch_io.state_dict_of({"w": t, "step": 3}, source="f.pth", entry="state_dict",
                               is_tensor=_is_tensor)
    assert str(err.value) == "f.pth: 1 of its 2 values are not tensors: ['step']"
    with pytest.raises(TypeError, match=r"f.pth: expected a state dict .* got list"):
        torch_io.state_dict_of([t], source="f.pth", entry="state_dict", is_tensor=_is_tensor)


def test_the_vq_converter_reads_through_torch_io(monkeypatch):
    from lasad_jax.convert import llamagen_vq

    seen = {}

    def fake(path, **kwargs):
        seen.update(path=path, **kwargs)
        return {}

    monkeypatch.setattr(torch_io, "read_torch_state_dict", fake)
    llamagen_vq.read_torch_state_dict("ck.pt", entry="ema")
    assert seen["path"] == "ck.pt" and seen["entry"] == "ema"
    assert "vq_ds16_c2i.pt" in seen["expected"]


class _Opaque:
    """Any class: `weights_only=True` refuses to unpickle it."""
