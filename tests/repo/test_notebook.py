"""The Colab sampling notebook, executed end to end, and the helpers it calls."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lasad_jax.config import parse
from lasad_jax.files import COMPLETE, cache_name
from lasad_jax.jobs.sample import load_or_train
from lasad_jax.models import LASADGen, ModelConfig
from lasad_jax.sampling.interactive import decay_map, fetch_workdir, layer_decays
from tests.helpers import load_config
from tests.remote_helpers import ram_fixture, upload  # noqa: F401 - a fixture

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "sampling_demo.ipynb"


def _model(mixer: str, grid=(3, 5)) -> LASADGen:
    cfg = ModelConfig(vocab_size=7, num_classes=2, grid=grid, num_layers=2, num_heads=3,
                      dim=24, mixer=mixer)
    return LASADGen(cfg, rngs=nnx.Rngs(0))


def test_decay_map_is_the_spec_around_the_token():
    """a^(r_i - r_j) * b^|c_i - c_j| for earlier tokens, 0 after, from a numpy loop."""
    model = _model("lasad")
    row, col = np.array([0.3, 0.9, 1.0]), np.array([0.6, 0.5, 0.99])
    mixer = model.blocks[1].mixer
    mixer.row_logit[...] = jnp.log(row / (1 - row + 1e-7))
    mixer.col_logit[...] = jnp.log(col / (1 - col + 1e-7))
    a, b = (np.asarray(x) for x in jax.nn.sigmoid(jnp.stack([mixer.row_logit[...],
                                                             mixer.col_logit[...]])))
    got = decay_map(model, 1, 1, 2)
    want = np.zeros((3, 3, 5))
    for h in range(3):
        for r in range(3):
            for c in range(5):
                if r * 5 + c <= 1 * 5 + 2:
                    want[h, r, c] = a[h] ** (1 - r) * b[h] ** abs(2 - c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert layer_decays(model)[1]["row_decay"] == pytest.approx(a, rel=1e-6)


def test_decay_map_other_mixers_and_bad_input():
    one_d = _model("linear_1d")
    lam = float(layer_decays(one_d)[0]["decay"][0])
    got = decay_map(one_d, 0, 2, 1)[0]
    # Raster distance: the end of the previous row (one step) outweighs the token above.
    assert got[1, 4] == pytest.approx(lam ** 2, rel=1e-5)   # (2,1) -> (1,4): 2 steps back
    assert got[1, 1] == pytest.approx(lam ** 5, rel=1e-5)   # directly above: a row back
    assert np.all(decay_map(_model("linear"), 0, 0, 3)[:, 0, :4] == 1.0)
    with pytest.raises(ValueError, match="softmax"):
        decay_map(_model("softmax"), 0, 0, 0)
    with pytest.raises(ValueError, match=r"must lie on the 3x5 grid"):
        decay_map(one_d, 0, 3, 0)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\)"):
        decay_map(one_d, 2, 0, 0)


def _tiny_config(steps: int):
    config = load_config("demo")
    config.num_steps = steps
    config.model.update(num_layers=1, num_heads=2, dim=32)
    config.optimizer.warmup_steps = 1
    config.train.update(eval_every=-1, checkpoint_every=steps, log_every=steps,
                        sample_at_end=False)
    return config


@pytest.mark.slow
def test_load_or_train_then_fetch_from_a_url(tmp_path, ram):
    """Trains when no checkpoint is given; a bucket URL (`ram://` standing in for
    `gs://`) is copied through tf.io.gfile and restores the same weights."""
    config = parse(_tiny_config(3), "train")
    trained, step = load_or_train(config, "", str(tmp_path / "run"))
    assert step == 3
    upload(tmp_path / "run" / "checkpoints", f"{ram}/run/checkpoints")
    cache = tmp_path / "cache"
    local = fetch_workdir(f"{ram}/run", str(cache))
    assert local == str(cache / cache_name(f"{ram}/run"))
    assert os.path.exists(os.path.join(local, COMPLETE))
    restored, step = load_or_train(config, f"{ram}/run", str(cache))
    assert step == 3
    for x, y in zip(jax.tree.leaves(nnx.state(trained, nnx.Param)),
                    jax.tree.leaves(nnx.state(restored, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert fetch_workdir(str(tmp_path / "run"), str(cache)) == str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no checkpoints/ under"):
        fetch_workdir(str(tmp_path / "nothing"), str(cache))


@pytest.mark.slow
@pytest.mark.notebook
def test_notebook_runs_end_to_end(tmp_path):
    """Executes every cell on CPU, the demo trained for 20 steps; no cell may fail."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ.update(LASAD_NOTEBOOK_STEPS="20", LASAD_NOTEBOOK_WORKDIR=str(tmp_path / "wd"))
    try:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for key in ("LASAD_NOTEBOOK_STEPS", "LASAD_NOTEBOOK_WORKDIR"):
            os.environ.pop(key, None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert "lasad model at step 20, grid (8, 8)" in text
    figures = [o for o in outputs if o["output_type"] == "display_data"
               and "image/png" in o["data"]]
    assert len(figures) == 2  # the sample grid and the decay maps
    assert "layer 3: row_decay" in text


def test_notebook_is_clean_and_linked():
    """Committed without outputs, and the Colab badge points at this very file."""
    nb = json.loads(NOTEBOOK.read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    first = "".join(nb["cells"][0]["source"])
    rel = NOTEBOOK.relative_to(ROOT).as_posix()
    assert f"colab.research.google.com/github/ORG/lasad_jax/blob/main/{rel}" in first
