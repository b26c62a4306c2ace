"""The ImageNet route at toy scale, in one process: train a VQ tokenizer, encode an image
folder into augmented code shards with it, train the generator on the codes, sample and
decode through the same tokenizer."""

from __future__ import annotations

import numpy as np

from lasad_jax.config_checks import check_config
from lasad_jax.data.extract import extract_from_config
from lasad_jax.sampling.job import run_sampling
from lasad_jax.tokenizers import build_tokenizer
from lasad_jax.training.loop import train_and_evaluate
from lasad_jax.training.vq.loop import train_tokenizer
from tests.test_cli import _write_folder
from tests.training.test_training import load_config
from tests.training.test_vq_training import tiny_vq_config


def test_tokenizer_extract_train_sample(tmp_path):
    train_tokenizer(tiny_vq_config(), str(tmp_path / "vq"))  # 16 px -> 8 x 8 codes, 32 codes
    for split in ("train", "val"):
        _write_folder(tmp_path / "images", split)

    config = load_config("imagenet256")
    config.batch_size = 4
    config.num_steps = 3
    config.data.update(num_classes=2, image_source="imagefolder",
                       image_dir=str(tmp_path / "images"), codes_dir=str(tmp_path / "codes"),
                       augment="flip", shard_size=4, extract_batch_size=4)
    config.tokenizer.update(checkpoint=str(tmp_path / "vq" / "tokenizer"), image_size=(16, 16),
                            codebook_size=32)
    config.model.update(preset="", num_layers=1, num_heads=2, dim=32, gate_rank=8,
                        dtype="float32")
    config.train.update(log_every=1, eval_every=0, eval_batch_size=4, checkpoint_every=3)
    config.sample.update(classes=(0, 1), per_class=2, batch_size=4)

    check_config(config, "extract")
    tokenizer = build_tokenizer(config.tokenizer)
    for split in ("train", "val"):
        manifest = extract_from_config(config.data, tokenizer, split)
        views = 2 if split == "train" else 1  # flips for training, the centre crop for val
        assert manifest["num_images"] == 6 and manifest["config"]["views"] == views

    check_config(config, "train")
    final = train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(final["val_bits_per_token"]) and final["val_bits_per_token"] < 6.0

    check_config(config, "sample")
    paths = run_sampling(config, str(tmp_path / "run"))
    with np.load(paths["npz"]) as f:
        assert f["arr_0"].shape == (4, 16, 16, 3) and f["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(f["labels"], [0, 0, 1, 1])
