"""`--mode=train` of the generator: resume reproduces an uninterrupted run, metrics files,
and a divergence keeps the last good checkpoint."""

from __future__ import annotations

import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.generator import make_state
from tests.helpers import hash_tree, tensorboard, tiny_demo_config, train


def final_state(workdir, steps=6):
    run = parse(tiny_demo_config(), "train")
    c = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), keep=2, save_every=1)
    skeleton = jax.eval_shape(lambda: make_state(run.model, run.optimizer,
                                                 batch_size=run.batch_size, seed=run.seed,
                                                 total_steps=steps)[1])
    out = c.restore(ckpt_lib.abstract(skeleton))
    c.close()
    return out


def with_samples(config):
    """`config` drawing one sample per class when the run ends."""
    config.train.sample_at_end = True
    config.sample.update(per_class=1, batch_size=16)
    return config


@pytest.mark.slow
def test_resumed_run_reproduces_uninterrupted_run(tmp_path):
    """Stop after 3 of 6 steps, resume: final parameters, optimizer and EMA equal those of
    a straight 6-step run (data order, dropout keys and Adam moments all restored). With
    `sample_at_end`, the chunk that `stop_after` ends draws nothing; the end of the run
    does."""
    straight = tmp_path / "straight"
    train(tiny_demo_config(), str(straight))
    split = tmp_path / "split"
    cfg = with_samples(tiny_demo_config())
    cfg.train.stop_after = 3
    train(cfg, str(split))
    assert ckpt_lib.Checkpointer(str(split / "checkpoints"), keep=2,
                                 save_every=1).latest_step() == 3
    assert not [f for f in os.listdir(split) if f.startswith("samples-")]
    train(with_samples(tiny_demo_config()), str(split))
    samples = sorted(f for f in os.listdir(split) if f.startswith("samples-"))
    assert [f.split("-")[1] for f in samples] == ["step6", "step6"]  # .npz and .png

    a, b = final_state(straight), final_state(split)
    assert int(a.step) == int(b.step) == 6
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)

    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one object per logged step
    for key in ("loss", "learning_rate", "grad_norm", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert "val_bits_per_token" in rows[-1] and "val_bits_per_token_ema" in rows[-1]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(straight))


@pytest.mark.slow
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


@pytest.mark.slow
def test_one_steps_per_sec_sample_grids_in_tensorboard_and_a_rerun_changes_nothing(
        tmp_path, caplog):
    """The progress line, metrics.jsonl and TensorBoard give the same steps_per_sec; each
    evaluation puts a sample grid into TensorBoard; the run ends with a summary line; the
    same command again changes no file at all."""
    config = tiny_demo_config(eval_every=3)  # evaluations at steps 3 and 6
    with caplog.at_level(logging.INFO, logger="absl"):
        train(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = tensorboard(tmp_path)
    assert [s for s, _ in events["steps_per_sec"]] == [r["step"] for r in rows] == list(range(1, 7))
    for (_, logged), row in zip(events["steps_per_sec"], rows):
        assert logged == pytest.approx(row["steps_per_sec"], rel=1e-6)  # float32 in the file
    messages = [r.getMessage() for r in caplog.records]
    progress = [re.match(r"step (\d)/6 \(\d+\.\d%\): ([\d.]+) steps/s, ETA", m) for m in messages]
    progress = [(int(m.group(1)), m.group(2)) for m in progress if m]
    assert progress == [(r["step"], f"{r['steps_per_sec']:.2f}") for r in rows]
    assert messages[-1].startswith("finished at step 6/6: 6 steps in ")
    # One row per class (8 of the 10 shown), 4 samples each: 8 x 8 digits, 2 px apart.
    grids = events["samples"]
    assert [s for s, _ in grids] == [3, 6]
    assert grids[0][1].shape == (2 + 8 * 10, 2 + 4 * 10) and grids[0][1].dtype == np.uint8  # grey

    before = hash_tree(tmp_path)
    train(config, str(tmp_path))
    assert hash_tree(tmp_path) == before


def test_samples_of_extracted_codes_need_the_tokenizer_that_made_them(monkeypatch):
    from lasad_jax.jobs import train as train_job
    from lasad_jax.jobs.train import _Decoder, check_decodes
    from lasad_jax.tokenizers import IntensityTokenizer, build_tokenizer

    made_them = IntensityTokenizer(levels=17, image_size=(8, 8), channels=1)
    other = IntensityTokenizer(levels=17, image_size=(8, 8), channels=3)
    check_decodes(made_them, made_them.fingerprint, "/codes")
    check_decodes(other, None, "/codes")  # codes too old to say: nothing to compare
    with pytest.raises(ValueError, match=r"^config.tokenizer \(.*\) is not the tokenizer that "
                       r"extracted config.data.codes_dir='/codes': sha256:\w+ there, "
                       r"sha256:\w+ here.*sample_at_end=False$"):
        check_decodes(other, made_them.fingerprint, "/codes")
    # Training on codes: config.tokenizer (the demo's, `made_them`) is built when samples
    # are drawn. TensorBoard's grids are skipped with a line; the final samples refused.
    config = parse(tiny_demo_config(), "train")
    assert build_tokenizer(config.tokenizer).fingerprint == made_them.fingerprint
    decoder = _Decoder(config, config.geometry, codes_fingerprint=other.fingerprint)
    said = []  # absl's logger is configured by whatever ran before: read the calls
    monkeypatch.setattr(train_job.logging, "info", lambda msg, *args: said.append(msg % args))
    assert decoder.get() is None and decoder.get() is None
    assert len(said) == 1
    assert said[0].startswith("no sample images in TensorBoard: config.tokenizer (")
    with pytest.raises(ValueError, match="is not the tokenizer that extracted"):
        decoder.require()
