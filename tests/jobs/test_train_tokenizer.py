"""`--mode=train` of a tokenizer config: metrics, resume, export, and the exported
tokenizer in use."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from lasad_jax.config import parse
from lasad_jax.data.image_batches import DigitImages
from lasad_jax.jobs import train_tokenizer as job
from lasad_jax.tokenizers.vq16 import VQ16Tokenizer
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.vq.step import make_vq_state
from tests.helpers import hash_tree, tensorboard, tiny_vq_config, write_image_folder


def train_tokenizer(config, workdir):
    return job.run(parse(config, "train"), workdir)


def final_state(workdir):
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), read_only=True)
    run = parse(tiny_vq_config(), "train")
    skeleton = jax.eval_shape(lambda: make_vq_state(
        run.vq, run.loss, run.optimizer, batch_size=run.batch_size, seed=run.seed,
        total_steps=4)[1])
    state = ckpt.restore(ckpt_lib.abstract(skeleton))
    ckpt.close()
    return state


@pytest.mark.slow
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
    # Each evaluation (here the last step) shows inputs over reconstructions in
    # TensorBoard: 8 images of 16 px, shown 3 times larger, on two rows, 2 px apart.
    images = tensorboard(straight)["reconstructions"]
    assert [s for s, _ in images] == [4] and images[0][1].shape == (2 + 2 * 50, 2 + 8 * 50, 3)
    # The same command again changes no file (nothing trained, exported or logged).
    before = hash_tree(straight)
    train_tokenizer(tiny_vq_config(), str(straight))
    assert hash_tree(straight) == before

    split = tmp_path / "split"
    train_tokenizer(tiny_vq_config(stop_after=2), str(split))
    assert not (split / "tokenizer").exists()  # half a run exports nothing
    train_tokenizer(tiny_vq_config(), str(split))
    assert (split / "tokenizer" / "vq_config.json").is_file()
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

    # Trained one step further, the run exports again; the export codes may have been
    # extracted with is kept aside, renamed, with its picture.
    def contents(path):  # a file's bytes, or a directory's {name: bytes}
        if path.is_file():
            return path.read_bytes()
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}

    before = {name: contents(split / name) for name in ("tokenizer", "reconstructions.png")}
    config = tiny_vq_config()
    config.num_steps = 5
    train_tokenizer(config, str(split))
    for name, old in before.items():
        assert contents(split / f"{name}.1") == old
        assert contents(split / name) != old


@pytest.mark.slow
def test_a_run_resumed_on_other_images_is_refused(tmp_path):
    """A checkpoint's data position counts through one set of images: resumed on
    another of as many images, grain would continue another shuffle silently."""
    first, other = tmp_path / "first", tmp_path / "other"
    for root in (first, other):
        for split in ("train", "val"):
            write_image_folder(root, split, per_class=4)
    # The same names and count; one training image holds other pixels.
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(other / "train" / "ant" / "0.png")
    # The step and evaluation of the test above (compiled once in a run of the suite),
    # stopped after one step.
    config = tiny_vq_config(checkpoint_every=1, stop_after=1)
    config.data.update(name="imagefolder", image_dir=str(first))
    run = tmp_path / "run"
    train_tokenizer(config, str(run))
    config.data.image_dir = str(other)
    with pytest.raises(ckpt_lib.CheckpointMismatch,
                       match=r"data_order\.dataset \(from the training examples"):
        train_tokenizer(config, str(run))
    # The same images elsewhere resume (`ImageFolderSource.fingerprint` reads paths
    # below the root); `tests/data/test_extract.py` moves a tree the same way.


def test_the_digits_fingerprint_names_their_images():
    one = DigitImages("train", scale=2, val_fraction=0.1, seed=0)
    assert one.fingerprint == DigitImages("train", scale=2, val_fraction=0.1, seed=0).fingerprint
    assert one.fingerprint != DigitImages("train", scale=2, val_fraction=0.1, seed=1).fingerprint
    assert one.fingerprint != DigitImages("val", scale=2, val_fraction=0.1, seed=0).fingerprint
