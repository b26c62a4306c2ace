"""The LlamaGen VQ-16 converter: the real key list, shape and key errors, reading torch
files. (Saving, loading and the tokenizer on a converted directory: tests/tokenizers.)

The expected key list (tests/convert/helpers.py) is enumerated from the architecture as
LlamaGen's `vq_model.py` builds it, independently of the converter's path -> key rule, so
a wrong rule cannot agree with itself.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from lasad_jax.convert import llamagen_vq as conv
from lasad_jax.tokenizers.vq import VQConfig, abstract_model, param_count
from tests.convert.helpers import llamagen_keys

@pytest.mark.slow
def test_full_vq16_checkpoint_converts_completely():
    keys = llamagen_keys()
    assert len(keys) == 344
    assert conv.expected_keys(VQConfig()) == {k: s for k, s in keys.items()
                                              if k != "quantize.codebook_used"}
    # Zero-stride arrays: every shape is real, but no memory is spent on the values.
    sd = {k: np.broadcast_to(np.float32(0.25), s) for k, s in keys.items()}
    state = conv.convert(sd, VQConfig())
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 343
    n = sum(x.size for x in leaves)
    assert n == param_count(abstract_model(VQConfig())) and 71.5e6 < n < 72.5e6
    assert state["encoder"]["conv_in"]["kernel"].shape == (3, 3, 3, 128)  # HWIO
    assert state["quantize"]["embedding"].shape == (16384, 8)
    # The stored codebook is unit-norm: 0.25 * sqrt(8) rows normalised.
    np.testing.assert_allclose(np.asarray(state["quantize"]["embedding"][...][0]),
                               np.full(8, 8 ** -0.5), rtol=1e-6)


def test_shape_and_key_errors_name_the_keys():
    """A bad shape, an unknown key and two missing keys: one error names all of them
    (`convert` checks everything before it copies an array)."""
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in llamagen_keys().items()}
    gone = ("decoder.mid.1.q.bias", "quant_conv.weight")
    bad = {k: v for k, v in sd.items() if k not in gone}
    bad.update({"encoder.conv_in.weight": np.zeros((128, 3, 4, 4), np.float32),
                "encoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError) as err:
        conv.convert(bad, VQConfig())
    lines = str(err.value).splitlines()
    assert lines[1:] == [
        "  - missing keys (2): ['decoder.mid.1.q.bias', 'quant_conv.weight']",
        "  - unknown keys, not used by VQModel (1): ['encoder.extra.weight']",
        "  - shape of encoder.conv_in.weight: expected (128, 3, 3, 3), got (128, 3, 4, 4)"]


def test_read_torch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"a.weight": torch.ones(2, 3), "b.bias": torch.zeros(2, dtype=torch.float16)}
    torch.save({"model": sd, "steps": 7}, tmp_path / "ck.pt")
    out = conv.read_torch_state_dict(str(tmp_path / "ck.pt"))
    assert set(out) == {"a.weight", "b.bias"} and out["b.bias"].dtype == np.float32
    torch.save({"ema": sd, "steps": 7}, tmp_path / "ema.pt")
    np.testing.assert_array_equal(
        conv.read_torch_state_dict(str(tmp_path / "ema.pt"), entry="ema")["a.weight"],
        np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"values are not tensors.*under 'ema'"):
        conv.read_torch_state_dict(str(tmp_path / "ema.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match=r"expected a state dict .*'model', got list"):
        conv.read_torch_state_dict(str(tmp_path / "list.pt"))


def test_reading_without_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without torch
    with pytest.raises(ImportError, match=r"needs PyTorch.*pip install torch"):
        conv.read_torch_state_dict("vq_ds16_c2i.pt")
