"""The generated shapes dataset: deterministic, balanced, disjoint splits, real geometry."""

from __future__ import annotations

import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.data import build_source
from lasad_jax.data.shapes import CLASSES, load_shapes, render
from lasad_jax.tokenizers import build_tokenizer
from tests.helpers import load_config


def test_deterministic_balanced_and_splits_differ():
    a, la = load_shapes("train", num_train=200, size=16, seed=3)
    b, lb = load_shapes("train", num_train=200, size=16, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert np.bincount(la, minlength=len(CLASSES)).tolist() == [20] * len(CLASSES)
    v, _ = load_shapes("val", num_val=200, size=16, seed=3)
    assert not any(np.array_equal(x, y) for x in a[:50] for y in v[:50])
    assert a.shape == (200, 16, 16, 1) and a.dtype == np.uint8


def test_shapes_have_their_geometry():
    """Hand checks on 32 px renders centred at (16, 16) with radius 12."""
    img = {name: render(name, 32, 16.0, 16.0, 12.0, 1.0) for name in CLASSES}
    assert img["disk"][16, 16] == 255 and img["ring"][16, 16] == 0      # ring has a hole
    assert img["square"][16, 16] == 255 and img["frame"][16, 16] == 0   # frame too
    assert img["plus"][16, 4] == 255 and img["cross"][16, 4] == 0       # arm vs diagonal
    assert img["cross"][8, 8] == 255 and img["plus"][8, 8] == 0
    # Bar pairs differ only by orientation: one is the other transposed.
    np.testing.assert_array_equal(img["hbars"], img["vbars"].T)
    assert img["triangle"][24, 16] == 255 and img["triangle"][7, 8] == 0  # apex up
    # Brightness scales the grey values; edges are anti-aliased (values in between).
    assert render("disk", 32, 16.0, 16.0, 12.0, 0.5).max() == 128
    assert len(np.unique(img["disk"])) > 2


def test_pipeline_and_config_checks():
    config = load_config("shapes")
    run = parse(config, "train")
    source = build_source(run.data, "val", build_tokenizer(run.tokenizer))
    assert len(source) == 600 and source.seq_len == 256
    assert int(source[0]["tokens"].max()) <= 16
    config.tokenizer.image_size = (8, 8)
    with pytest.raises(ValueError, match=r"config.tokenizer.image_size must be \(16, 16\)"):
        parse(config, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_shapes("test")
