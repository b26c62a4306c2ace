"""The command line, as a user runs it: train then sample on the demo config, and the
ImageNet config's fail-fast check."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lasad_jax.config import parse
from lasad_jax.main import cli
from tests.helpers import ROOT, hash_tree, load_config, write_image_folder

SMALL = ["--config.num_steps=4", "--config.batch_size=16", "--config.model.num_layers=1",
         "--config.model.dim=32", "--config.model.num_heads=2", "--config.model.gate_rank=8",
         "--config.optimizer.warmup_steps=1", "--config.train.log_every=2",
         "--config.train.eval_every=0", "--config.train.checkpoint_every=2",
         "--config.sample.per_class=2", "--config.sample.batch_size=8",
         "--config.sample.grid_scale=2"]


def run_main(workdir, *args: str, config=ROOT / "configs" / "demo.py"):
    cmd = [sys.executable, "-m", "lasad_jax.main", f"--config={config}",
           f"--workdir={workdir}", *SMALL, *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_cli_train_then_sample(tmp_path):
    train = run_main(tmp_path, "--config.train.sample_at_end=False")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "validation" in train.stderr and "bits/token" in train.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert not glob.glob(str(tmp_path / "samples*"))

    sample = run_main(tmp_path, "--mode=sample", "--config.sample.classes=(3, 7)")
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert "restored step 4 (EMA weights)" in sample.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]  # sampling is read-only
    # Named by the checkpoint step and a digest of the settings, which the files record.
    [npz] = glob.glob(str(tmp_path / "samples-step4-*.npz"))
    with np.load(npz) as f:
        images, labels, settings = f["arr_0"], f["labels"], json.loads(str(f["settings"]))
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [3, 3, 7, 7])
    assert settings["classes"] == [3, 7] and settings["checkpoint_step"] == 4
    # Decoded intensity levels: multiples of 255/16, rounded.
    assert set(np.unique(images)) <= {round(level * 255 / 16) for level in range(17)}
    with Image.open(npz.replace(".npz", ".png")) as png:
        grid = np.asarray(png)
        assert json.loads(png.text["lasad_sample_settings"]) == settings
    assert grid.shape == (2 + 2 * (16 + 2), 2 + 2 * (16 + 2))  # 2 classes x 2 samples, scale 2

    # The same draw again writes nothing; another seed is another pair of files.
    before = hash_tree(tmp_path)
    argv = [f"--config={ROOT / 'configs' / 'demo.py'}", f"--workdir={tmp_path}", *SMALL,
            "--mode=sample", "--config.sample.classes=(3, 7)"]
    assert cli(["lasad_jax.main", *argv]) == 0
    assert hash_tree(tmp_path) == before
    assert cli(["lasad_jax.main", *argv, "--config.sample.seed=1"]) == 0
    assert len(glob.glob(str(tmp_path / "samples-step4-*.npz"))) == 2


@pytest.mark.slow
def test_cli_rejects_bad_override(tmp_path):
    bad = run_main(tmp_path, "--config.model.mixer=mamba")
    assert bad.returncode != 0
    assert "model.mixer must be one of" in bad.stderr
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_a_multi_host_start_outside_a_cluster_says_so(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "JAX_COORDINATOR", "TPU_", "OMPI_", "PMI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LASAD_MULTIHOST", "1")
    out = run_main(tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: LASAD_MULTIHOST=1 asks for a multi-host start, but JAX found no TPU pod or "
        "SLURM job")
    assert "unset LASAD_MULTIHOST" in out.stderr


@pytest.mark.slow
def test_sample_without_checkpoint_says_so(tmp_path):
    out = run_main(tmp_path, "--mode=sample")
    assert out.returncode != 0 and "train first" in out.stderr


def test_imagenet_config_fails_fast_naming_what_is_missing(tmp_path):
    config = load_config("imagenet256")
    assert (config.model.preset, config.model.dtype, config.batch_size) == ("L", "bfloat16", 256)
    assert (config.optimizer.b1, config.optimizer.b2, config.optimizer.weight_decay,
            config.optimizer.lr, config.optimizer.grad_clip) == (0.9, 0.95, 0.05, 1e-4, 1.0)
    assert config.train.class_dropout == 0.1 and config.num_epochs == 300
    with pytest.raises(ValueError, match=r"config.data.codes_dir is empty"):
        parse(config, "train")
    config.data.codes_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"holds no extracted train split"):
        parse(config, "train")
    with pytest.raises(ValueError, match="config.tokenizer.checkpoint is empty"):
        parse(config, "sample")
    with pytest.raises(ValueError, match="encoding images needs the VQ-16 tokenizer"):
        parse(config, "extract")


FOLDER_CONFIG = """
import importlib.util

def get_config():
    spec = importlib.util.spec_from_file_location("demo", {demo!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data = dict(name="extracted", num_classes=2, codes_dir={codes!r}, val_fraction=0.0,
                       seed=0, image_source="imagefolder", image_dir={images!r},
                       tfds_data_dir="", manual_dir="", augment="flip",
                       extract_splits=("train", "val"), shard_size=2, extract_batch_size=4,
                       skip_corrupt=False)
    config.tokenizer.channels = 3
    config.train.sample_at_end = False
    return config
"""


@pytest.mark.slow
def test_cli_extract_then_train_on_an_image_folder(tmp_path):
    """The ImageNet route at toy scale: a class-per-folder dataset is encoded once into
    augmented code shards, then the trainer reads them."""
    for split in ("train", "val"):
        write_image_folder(tmp_path / "images", split)
    config = tmp_path / "folder_config.py"
    config.write_text(FOLDER_CONFIG.format(demo=str(ROOT / "configs" / "demo.py"),
                                           codes=str(tmp_path / "codes"),
                                           images=str(tmp_path / "images")))
    out = run_main(tmp_path / "work", "--mode=extract", config=config)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "extracted train: 6 images, 0 skipped" in out.stderr
    assert "extracted val: 6 images, 0 skipped" in out.stderr
    train = run_main(tmp_path / "work", config=config)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "6 train / 6 val examples" in train.stderr
    assert (tmp_path / "work" / "checkpoints" / "4").is_dir()


@pytest.mark.parametrize("flag, text, field, value", [
    ("--config.seed", "-1", "seed", -1),
    ("--config.sample.cfg_scale", "-1.5", "sample.cfg_scale", -1.5),
    ("--config.sample.cfg_scale", "-.5", "sample.cfg_scale", -0.5),
    ("--config.optimizer.lr", "-1e-3", "optimizer.lr", -1e-3),
])
def test_a_negative_number_after_a_space_is_the_value(flag, text, field, value):
    """`--config.seed -1` used to leave `-1` to absl ("Unknown command line flag '1'");
    a range check, not the parser, must be what refuses a bad negative value."""
    from lasad_jax.main import parse_flags, split_overrides
    from tests.helpers import flag_config

    args = ["--config=configs/demo.py", "--workdir=/tmp/unused", flag, text, "--mode=sample"]
    rest, overrides = split_overrides(args)
    assert rest == ["--config=configs/demo.py", "--workdir=/tmp/unused", "--mode=sample"]
    assert overrides == [(flag.removeprefix("--config."), text)]
    assert parse_flags(["lasad_jax.main", *args])[-1] == f"{flag}={text}"
    config = flag_config(f"--config={ROOT / 'configs' / 'demo.py'}", flag, text)
    block, _, name = field.rpartition(".")
    assert (config[block] if block else config)[name] == value


def test_a_flag_after_a_bare_override_is_not_taken_as_its_value():
    from lasad_jax.main import split_overrides

    rest, overrides = split_overrides(["--config.train.sample_at_end", "--mode=sample",
                                       "--config.train.sample_at_end", "-v",
                                       "--config.train.sample_at_end", "--"])
    assert rest == ["--mode=sample", "-v", "--"]
    assert overrides == [("train.sample_at_end", None)] * 3


def test_a_run_that_fails_before_writing_leaves_no_workdir(tmp_path):
    """The job makes its workdir before it reads its data: a damaged manifest then
    fails the run, which takes back the directories it made (and only those)."""
    codes = tmp_path / "codes"
    codes.mkdir()
    for split in ("train", "val"):
        (codes / f"{split}-manifest.json").write_text("{broken")

    def train(workdir) -> int:
        return cli(["lasad_jax.main", f"--config={ROOT / 'configs' / 'demo.py'}",
                    f"--workdir={workdir}", "--config.data.name=extracted",
                    f"--config.data.codes_dir={codes}"])

    (tmp_path / "runs").mkdir()  # there before: kept, though empty
    assert train(tmp_path / "runs" / "a" / "b") == 1
    assert (tmp_path / "runs").is_dir() and not any((tmp_path / "runs").iterdir())
    (tmp_path / "old").mkdir()
    assert train(tmp_path / "old") == 1
    assert (tmp_path / "old").is_dir()
