"""A workdir written before the typed config and the jobs layer still samples and resumes,
with the numbers the old code gave.

`old_workdir/` was written by commit 06668d1 (the code before this layer existed) with

    python -m lasad_jax.main --config=configs/demo.py --workdir=old_workdir \
        OLD_RUN... --config.train.stop_after=2

(a checkpoint at step 2 of a 4-step run); `old_samples_step2.npz` is what that code's
`--mode=sample` drew from it, and `old_straight_metrics.jsonl` the metrics of the same
run trained for 4 steps without stopping.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.jobs import sample, train
from tests.helpers import load_config

HERE = pathlib.Path(__file__).parent
OLD_RUN = ["batch_size=16", "model.num_layers=1", "model.dim=8", "model.num_heads=2",
           "model.gate_rank=2", "optimizer.warmup_steps=1", "train.log_every=1",
           "train.eval_every=0", "train.checkpoint_every=2", "train.keep_checkpoints=1",
           "train.sample_at_end=False", "train.eval_batch_size=64", "num_steps=4",
           "sample.per_class=1", "sample.batch_size=10"]


def old_run_config(mode: str):
    """The demo config with the overrides OLD_RUN, as `--config.FIELD=VALUE` sets them."""
    config = load_config("demo")
    for override in OLD_RUN:
        path, value = override.split("=")
        *blocks, field = path.split(".")
        node = config
        for block in blocks:
            node = node[block]
        node[field] = type(node[field])(value) if value != "False" else False
    return parse(config, mode)


@pytest.fixture
def workdir(tmp_path):
    return str(shutil.copytree(HERE / "old_workdir", tmp_path / "old_workdir"))


def test_sampling_an_old_checkpoint_draws_the_old_images(workdir):
    paths = sample.run(old_run_config("sample"), workdir)
    with np.load(paths["npz"]) as new, np.load(HERE / "old_samples_step2.npz") as old:
        np.testing.assert_array_equal(new["arr_0"], old["arr_0"])
        np.testing.assert_array_equal(new["labels"], old["labels"])


@pytest.mark.slow
def test_resuming_an_old_workdir_continues_the_old_run(workdir):
    train.run(old_run_config("train"), workdir)
    with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
        got = [json.loads(line) for line in f]
    with open(HERE / "old_straight_metrics.jsonl") as f:
        want = [json.loads(line) for line in f]
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got[2:], want[2:]):  # steps 3 and 4, trained by this code
        for key in ("loss", "grad_norm", "param_norm", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    assert got[-1]["val_bits_per_token_ema"] == pytest.approx(
        want[-1]["val_bits_per_token_ema"], rel=1e-6)
