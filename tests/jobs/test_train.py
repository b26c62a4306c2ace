"""`--mode=train` of the generator: resume reproduces an uninterrupted run, metrics files,
and a divergence keeps the last good checkpoint."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.generator import make_state
from tests.helpers import tiny_demo_config, train


def final_state(workdir, steps=6):
    run = parse(tiny_demo_config(), "train")
    c = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), keep=2, save_every=1)
    skeleton = jax.eval_shape(lambda: make_state(run.model, run.optimizer,
                                                 batch_size=run.batch_size, seed=run.seed,
                                                 total_steps=steps)[1])
    out = c.restore(ckpt_lib.abstract(skeleton))
    c.close()
    return out


def test_resumed_run_reproduces_uninterrupted_run(tmp_path):
    """Stop after 3 of 6 steps, resume: final parameters, optimizer and EMA equal those of
    a straight 6-step run (data order, dropout keys and Adam moments all restored)."""
    straight = tmp_path / "straight"
    train(tiny_demo_config(), str(straight))
    split = tmp_path / "split"
    cfg = tiny_demo_config()
    cfg.train.stop_after = 3
    train(cfg, str(split))
    assert ckpt_lib.Checkpointer(str(split / "checkpoints"), keep=2,
                                 save_every=1).latest_step() == 3
    train(tiny_demo_config(), str(split))

    a, b = final_state(straight), final_state(split)
    assert int(a.step) == int(b.step) == 6
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)

    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one object per logged step
    for key in ("loss", "learning_rate", "grad_norm", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert "val_bits_per_token" in rows[-1] and "val_bits_per_token_ema" in rows[-1]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(straight))


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_demo_config()
    cfg.train.stop_after = 3
    train(cfg, str(tmp_path))
    bad = tiny_demo_config()
    bad.optimizer.update(lr=1e38, warmup_steps=0)
    with pytest.raises(FloatingPointError, match="non-finite training values"):
        train(bad, str(tmp_path))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=2, save_every=1)
    assert ckpt.latest_step() == 3
    ckpt.close()
