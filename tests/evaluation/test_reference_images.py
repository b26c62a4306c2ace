"""Which real images a reference holds: a limit draws a seeded random subset (an image
folder is ordered by class, so its first images would cover the first classes only),
and statistics made by the old first-N rule are refused rather than reused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lasad_jax.config import parse
from lasad_jax.data.config import DataConfig
from lasad_jax.evaluation.inception import POOL_DIM, SPATIAL_DIM
from lasad_jax.evaluation.real_images import dataset_images, reference_subset
from lasad_jax.evaluation.reference import write_reference
from lasad_jax.jobs import reference_stats
from lasad_jax.tokenizers import TokenizerConfig
from tests.helpers import tiny_demo_config

CLASSES, PER_CLASS = 5, 6


@pytest.fixture
def class_ordered(tmp_path):
    """An image folder whose class `c` images are all grey level 40 * c."""
    for c in range(CLASSES):
        folder = tmp_path / "train" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(np.full((12, 12, 3), 40 * c, np.uint8)).save(folder / f"{i}.png")
    return DataConfig(name="codes", image_source="imagefolder", image_dir=str(tmp_path),
                      num_classes=CLASSES)


def _classes(data: DataConfig, limit: int) -> list[int]:
    tokenizer = TokenizerConfig(name="intensity", image_size=(8, 8), channels=3)
    batches = list(dataset_images(data, tokenizer, "train", limit))
    return [int(v) // 40 for v in np.concatenate(batches)[:, 0, 0, 0]]


def test_a_limit_draws_from_every_part_of_a_class_ordered_folder(class_ordered):
    # The first 8 images would be classes 0 and 1 only.
    classes = _classes(class_ordered, 8)
    assert len(classes) == 8 and len(set(classes)) > 2, classes
    assert classes == sorted(classes)  # read in dataset order
    assert _classes(class_ordered, 8) == classes  # the same subset every run
    assert _classes(class_ordered, 0) == [c for c in range(CLASSES) for _ in range(PER_CLASS)]


def test_reference_subset_is_sorted_seeded_and_whole_without_a_limit():
    picked = reference_subset(1000, 10)
    assert len(set(picked)) == 10 and list(picked) == sorted(picked)
    np.testing.assert_array_equal(picked, reference_subset(1000, 10))
    assert picked.max() > 100  # not a prefix
    np.testing.assert_array_equal(reference_subset(7, 0), np.arange(7))
    np.testing.assert_array_equal(reference_subset(7, 50), np.arange(7))


def _statistics(settings):
    return {"mu": np.zeros(POOL_DIM), "sigma": np.eye(POOL_DIM), "mu_s": np.zeros(SPATIAL_DIM),
            "sigma_s": np.eye(SPATIAL_DIM), "preprocess": "adm", "settings": settings}


def test_limited_statistics_of_the_first_n_rule_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(reference_stats, "load_network", lambda *a: pytest.fail("loaded"))
    config = tiny_demo_config()
    config.eval.update(reference_limit=24)
    run = parse(config, "reference_stats")
    # The demo's images pass through its tokenizer, whose fingerprint the file records.
    tokenizer = reference_stats.build_tokenizer(run.tokenizer)
    settings = reference_stats.reference_settings(run, tokenizer)
    assert settings["subset"] == "uniform random, seed 0"
    old = {k: v for k, v in settings.items() if k != "subset"}  # as earlier versions wrote
    write_reference(tmp_path / "reference_stats.npz", _statistics(old))
    with pytest.raises(ValueError) as err:
        reference_stats.run(run, str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / 'reference_stats.npz'} holds other reference statistics (subset: "
        "None -> 'uniform random, seed 0'); set config.eval.reference to another file, or "
        "move it away")
    # Without a limit both rules take every image: such files still match.
    config.eval.update(reference_limit=0, reference=str(tmp_path / "all.npz"))
    run = parse(config, "reference_stats")
    unlimited = reference_stats.reference_settings(run, tokenizer)
    assert "subset" not in unlimited
    write_reference(tmp_path / "all.npz", _statistics(unlimited))
    assert reference_stats.run(run, str(tmp_path)) == str(tmp_path / "all.npz")
