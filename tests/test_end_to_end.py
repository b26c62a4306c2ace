"""The ImageNet route at toy scale, in one process: train a VQ tokenizer, encode an image
folder into augmented code shards with it, train the generator on the codes, sample and
decode through the same tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.jobs import extract, sample, train, train_tokenizer
from tests.helpers import load_config, tiny_vq_config, write_image_folder


@pytest.mark.slow
def test_tokenizer_extract_train_sample(tmp_path):
    # 16 px -> 8 x 8 codes, 32 codes
    train_tokenizer.run(parse(tiny_vq_config(), "train"), str(tmp_path / "vq"))
    for split in ("train", "val"):
        write_image_folder(tmp_path / "images", split)

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

    manifests = extract.run(parse(config, "extract"))
    for split, manifest in zip(("train", "val"), manifests):
        views = 2 if split == "train" else 1  # flips for training, the centre crop for val
        assert manifest["num_images"] == 6 and manifest["config"]["views"] == views

    final = train.run(parse(config, "train"), str(tmp_path / "run"))
    assert np.isfinite(final["val_bits_per_token"]) and final["val_bits_per_token"] < 6.0

    paths = sample.run(parse(config, "sample"), str(tmp_path / "run"))
    with np.load(paths["npz"]) as f:
        assert f["arr_0"].shape == (4, 16, 16, 3) and f["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(f["labels"], [0, 0, 1, 1])
