"""Tokenizer training: metrics, resume, export, and the exported tokenizer in use."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lasad_jax.config_checks import config_problems
from lasad_jax.data.image_batches import DigitImages, image_train_iterator
from lasad_jax.tokenizers.vq16 import VQ16Tokenizer
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.vq.loop import make_vq_state, train_tokenizer
from tests.training.test_training import load_config


def tiny_vq_config(**train):
    config = load_config("vq_demo")
    config.vq.update(ch=16, ch_mult=(1, 2), z_channels=16, codebook_size=32, norm_groups=8)
    config.loss.update(disc_start=3, disc_channels=8, disc_layers=1)
    config.batch_size = 8
    config.num_steps = 4
    config.optimizer.warmup_steps = 1
    config.train.update(image_size=16, log_every=1, eval_every=0, eval_batch_size=16,
                        eval_images=16, checkpoint_every=2, progress_every_secs=0.0)
    config.train.update(train)
    return config


def final_state(workdir):
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
    skeleton = jax.eval_shape(lambda: make_vq_state(tiny_vq_config(), 4)[1])
    state = ckpt.restore(ckpt_lib.abstract(skeleton))
    ckpt.close()
    return state


def test_tokenizer_training_logs_resumes_and_exports(tmp_path):
    straight = tmp_path / "straight"
    train_tokenizer(tiny_vq_config(), str(straight))
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("rec_loss", "codebook_loss", "commitment_loss", "codebook_usage", "psnr",
                "gen_adv_loss", "disc_loss", "learning_rate", "grad_norm", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in rows), key
    # The GAN terms switch on at loss.disc_start (LlamaGen counts steps from 1).
    assert [r["adv_weight"] for r in rows] == [0.0, 0.0, 0.5, 0.5]
    assert rows[0]["disc_loss"] == 0.0 and rows[-1]["disc_loss"] > 0.0
    assert 0.0 < rows[-1]["val_codebook_used"] <= 1.0 and rows[-1]["val_psnr"] > 0.0
    assert (straight / "reconstructions.png").is_file()

    split = tmp_path / "split"
    train_tokenizer(tiny_vq_config(stop_after=2), str(split))
    train_tokenizer(tiny_vq_config(), str(split))
    a, b = final_state(straight), final_state(split)
    assert int(a.step) == int(b.step) == 4
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)

    # The export is a tokenizer the generator's pipeline can use.
    tokenizer = VQ16Tokenizer(str(straight / "tokenizer"), (16, 16), batch_size=4)
    assert tokenizer.grid_shape == (8, 8) and tokenizer.vocab_size == 32
    images = DigitImages("val", scale=2, val_fraction=0.1, seed=0).images[:5]
    codes = tokenizer.encode(images)
    assert codes.shape == (5, 8, 8) and codes.min() >= 0 and codes.max() < 32
    assert tokenizer.decode(codes).shape == (5, 16, 16, 3)


def test_image_iterator_crops_flips_and_resumes():
    source = DigitImages("train", scale=2, val_fraction=0.1, seed=0)
    it = image_train_iterator(source, image_size=16, batch_size=4, seed=1)
    first = next(it)["image"]
    assert first.shape == (4, 16, 16, 3) and first.dtype == np.uint8
    state = it.get_state()
    expected = [next(it)["image"] for _ in range(2)]
    again = image_train_iterator(source, image_size=16, batch_size=4, seed=1)
    again.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(again)["image"], want)


def test_tokenizer_config_checks():
    config = load_config("vq_demo")
    assert config_problems(config, "train") == []
    config.loss.perceptual_weight = 1.0
    assert "config.loss.perceptual_weights is empty" in config_problems(config, "train")[0]
    assert "does not apply to a tokenizer config" in config_problems(config, "sample")[0]
    imagenet = load_config("vq_imagenet256")
    problems = config_problems(imagenet, "train")
    assert any("config.loss.perceptual_weights" in p for p in problems)
    with pytest.raises(ValueError, match="config.task must be one of"):
        from lasad_jax.config_checks import check_config

        config.task = "classifier"
        check_config(config, "train")
