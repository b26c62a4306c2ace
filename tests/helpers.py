"""Shared by tests of several packages: the repository's configs (as a user loads them),
shrunk to seconds, and a small class-per-folder image dataset."""

from __future__ import annotations

import json
import os
import pathlib
import runpy
from typing import Any

import numpy as np
from ml_collections import config_dict
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]

# `compiler_options` that give a test reading a compiled program's optimized HLO the
# default CPU pipeline back: the suite compiles without XLA's CPU fusion emitters, which
# halves its compile time and changes the optimized HLO (tests/conftest.py,
# `_quick_cpu_codegen`; tests/repo/test_compilation_cache.py checks the text comes back
# exactly). Elsewhere the option is the default already.
DEFAULT_PIPELINE = {"xla_cpu_use_fusion_emitters": True}


# The demo shrunk to one small layer, as flags for the command in a subprocess (seconds a
# run): the runs of tests/training/test_reliability.py and tests/parallel/test_multiprocess.py.
TINY_STEPS = 30
TINY_RUN = ["--config.batch_size=16", "--config.model.num_layers=1", "--config.model.dim=32",
            "--config.model.num_heads=2", "--config.model.gate_rank=8",
            "--config.optimizer.warmup_steps=2", "--config.train.log_every=1",
            "--config.train.eval_every=-1", "--config.train.sample_at_end=False",
            "--config.train.progress_every_secs=0", f"--config.num_steps={TINY_STEPS}"]
# What two runs of the same training must log alike (a resumed one and an uninterrupted).
COMPARED = ("loss", "grad_norm", "param_norm", "learning_rate")


def metrics_rows(workdir) -> list[dict[str, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_rows(workdir, reference, steps: int = TINY_STEPS) -> None:
    """`workdir`'s metrics.jsonl logs steps 1..`steps` once each, as `reference`'s does,
    with the `COMPARED` values within 1e-6 (relative above 1)."""
    got, want = metrics_rows(workdir), metrics_rows(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, steps + 1))
    for a, b in zip(got, want):
        for key in COMPARED:
            assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(b[key])), (a["step"], key)


def load_config(name: str) -> config_dict.ConfigDict:
    """`configs/{name}.py`'s config, as `--config=configs/{name}.py` loads it."""
    return runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"]()


def tiny_demo_config(**train) -> config_dict.ConfigDict:
    """The demo config shrunk to seconds: one small layer, a few steps, no samples."""
    config = load_config("demo")
    config.model.update(num_layers=1, num_heads=2, dim=32, gate_rank=8)
    config.batch_size = 16
    config.num_steps = 6
    config.optimizer.warmup_steps = 2
    config.train.update(log_every=1, eval_every=0, eval_batch_size=64, checkpoint_every=3,
                        sample_at_end=False, progress_every_secs=0.0)
    config.train.update(train)
    return config


def tiny_vq_config(**train) -> config_dict.ConfigDict:
    """The tokenizer demo shrunk to seconds: 16 px -> 8 x 8 codes from 32 codes."""
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


def flag_config(*args: str) -> config_dict.ConfigDict:
    """The config `--config=PATH --config.FIELD=VALUE ...` gives, read as
    `python -m lasad_jax.main` reads it."""
    from lasad_jax.config import apply_overrides, load_config_file
    from lasad_jax.main import split_overrides

    rest, overrides = split_overrides(args)
    config = load_config_file(rest[0].split("=", 1)[1])
    apply_overrides(config, overrides)
    return config


def train(config: config_dict.ConfigDict, workdir) -> dict[str, float]:
    """`--mode=train` of `config` in `workdir`, in this process; the final metrics."""
    from lasad_jax.config import parse
    from lasad_jax.jobs import train as train_job

    return train_job.run(parse(config, "train"), str(workdir))


def write_image_folder(root: pathlib.Path, split: str, per_class: int = 3) -> None:
    """`root/split/{ant,bee}/{i}.png`: small RGB images of two classes, sizes varying."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee"]):
        d = root / split / name
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.full((12 + i, 10, 3), 40 + 150 * c, np.uint8)
            img += rng.integers(0, 20, img.shape, dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")


def hash_tree(*roots) -> dict[str, str]:
    """`{path: sha256}` of every file under `roots` (missing roots hold nothing): two
    equal trees mean no file was added, removed or changed."""
    import hashlib
    import os

    found = {}
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def tensorboard(workdir) -> dict[str, list[tuple[int, Any]]]:
    """`{tag: [(step, value)]}` of the TensorBoard event files in `workdir`, read with
    TensorBoard's own reader: scalars as floats, images as uint8 `[H, W, C]` arrays."""
    import io

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    found: dict[str, list[tuple[int, Any]]] = {}
    for tag in events.Tags()["tensors"]:
        if tag.startswith("_hparams_"):
            continue
        for event in events.Tensors(tag):
            value = make_ndarray(event.tensor_proto)
            if value.dtype == object:  # an image summary: width, height, PNG bytes
                value = np.asarray(Image.open(io.BytesIO(value[2])))
            else:
                value = float(value)
            found.setdefault(tag, []).append((event.step, value))
    return found
