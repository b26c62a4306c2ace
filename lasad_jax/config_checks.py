"""Fail-fast checks of a whole config before any model is built or data is read.

Each problem names the config field and what to do about it; all problems are reported
together, so a user fixes a config in one round trip, not one error at a time.
"""

from __future__ import annotations

import os
from typing import Any

from lasad_jax.data.codes import code_paths
from lasad_jax.data.extract import manifest_path

TASKS = ("generator", "tokenizer")


def config_problems(config: Any, mode: str) -> list[str]:
    problems = []
    task = config.get("task", "generator")
    if task not in TASKS:
        return [f"config.task must be one of {TASKS}, got {task!r}"]
    if task == "tokenizer":
        return _tokenizer_problems(config, mode)
    if config.batch_size < 1:
        problems.append(f"config.batch_size must be >= 1, got {config.batch_size}")
    problems += _generator_problems(config, mode)
    problems += mesh_problems(config, mode)
    if mode == "train" and config.data.name == "codes":
        codes_dir = config.data.codes_dir
        if not codes_dir:
            problems.append(
                "config.data.codes_dir is empty: this config trains on pre-extracted token "
                "codes; point it at a directory holding train_codes.npy and "
                "train_labels.npy (see README, 'Training on ImageNet')")
        else:
            missing = [p for p in code_paths(codes_dir, "train") if not os.path.exists(p)]
            if missing:
                names = [str(p) for p in missing]
                problems.append(f"config.data.codes_dir={codes_dir!r} lacks {names}")
    if mode == "train" and config.data.name == "extracted":
        codes_dir = config.data.codes_dir
        if not codes_dir:
            problems.append(
                "config.data.codes_dir is empty: this config trains on extracted token codes; "
                "run --mode=extract first (see README, 'Training on ImageNet')")
        elif not os.path.exists(manifest_path(codes_dir, "train")):
            problems.append(
                f"config.data.codes_dir={codes_dir!r} holds no extracted train split "
                f"({manifest_path(codes_dir, 'train')} is missing): run --mode=extract first")
    if mode == "extract":
        if not config.data.get("codes_dir"):
            problems.append("config.data.codes_dir is empty: name the directory the "
                            "extracted codes go to")
    if mode in ("evaluate", "reference_stats"):
        problems += _eval_problems(config, mode)
    if mode in ("extract", "sample", "evaluate") or (
            mode == "train" and config.train.sample_at_end):
        why = "encoding images" if mode == "extract" else "decoding samples"
        problems += _vq_checkpoint_problems(config, why)
    return problems


def _catch(problems: list[str], block: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs a validator of config block `block`; a ValueError becomes a problem whose
    message starts with the config path of the field."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        msg = str(err)
        problems.append(f"config.{msg}" if msg.startswith(f"{block}.")
                        else f"config.{block}: {msg}")
        return None


def _generator_problems(config: Any, mode: str) -> list[str]:
    """The model, data, optimizer, training and sampling fields, with the validators the
    run itself would use, so every mistake shows up here before anything is built."""
    from lasad_jax.data.pipeline import VALID_NAMES
    from lasad_jax.models import ModelConfig
    from lasad_jax.sampling.generate import check_sampling_args
    from lasad_jax.tokenizers.geometry import code_geometry
    from lasad_jax.training.optimizer import SCHEDULES
    from lasad_jax.training.step import NONFINITE_POLICIES

    problems: list[str] = []
    if config.data.name not in VALID_NAMES:
        problems.append(f"config.data.name must be one of {VALID_NAMES}, got "
                        f"{config.data.name!r}")
    num_classes = config.data.num_classes
    if not isinstance(num_classes, int) or num_classes < 1:
        problems.append(f"config.data.num_classes must be a positive int, got {num_classes!r}")
        num_classes = 1
    embedded = {"digits": 8, "shapes": config.data.get("size")}.get(config.data.name)
    if embedded and (tuple(config.tokenizer.image_size) != (embedded, embedded)
                     or config.tokenizer.get("channels", 1) != 1):
        problems.append(f"config.tokenizer.image_size must be ({embedded}, {embedded}) with "
                        f"channels=1 for the grey {config.data.name} (config.data.name="
                        f"{config.data.name!r}), got {tuple(config.tokenizer.image_size)}")
    geometry = _catch(problems, "tokenizer", code_geometry, config.tokenizer)
    if geometry is not None:
        _catch(problems, "model", ModelConfig.from_config, config.model,
               vocab_size=geometry.vocab_size, grid=geometry.grid_shape,
               num_classes=num_classes)
    if not config.num_steps and not config.num_epochs:
        problems.append("set config.num_steps or config.num_epochs (both are 0)")
    opt = config.optimizer
    if opt.schedule not in SCHEDULES:
        problems.append(f"config.optimizer.schedule must be one of {SCHEDULES}, got "
                        f"{opt.schedule!r}")
    if not opt.lr > 0:
        problems.append(f"config.optimizer.lr must be > 0, got {opt.lr}")
    for name in ("b1", "b2"):
        if not 0.0 <= opt[name] < 1.0:
            problems.append(f"config.optimizer.{name} must be in [0, 1), got {opt[name]}")
    train = config.train
    if train.get("nonfinite", "halt") not in NONFINITE_POLICIES:
        problems.append(f"config.train.nonfinite must be one of {NONFINITE_POLICIES}, got "
                        f"{train.nonfinite!r}")
    for name in ("log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size"):
        if train[name] < 1:
            problems.append(f"config.train.{name} must be >= 1, got {train[name]}")
    if mode in ("sample", "evaluate") or (mode == "train" and train.sample_at_end):
        problems += _sampling_problems(config.sample, num_classes,
                                       geometry.vocab_size if geometry else None)
        _catch(problems, "sample", check_sampling_args, cfg_scale=config.sample.cfg_scale,
               temperature=config.sample.temperature, top_k=config.sample.top_k,
               top_p=config.sample.top_p)
    return problems


def _sampling_problems(sample: Any, num_classes: int, vocab: int | None) -> list[str]:
    problems = []
    bad = [c for c in sample.classes if not isinstance(c, int) or not 0 <= c < num_classes]
    if bad:
        problems.append(f"config.sample.classes must be class ids in [0, {num_classes}), got "
                        f"{bad}")
    for name in ("per_class", "batch_size"):
        if sample[name] < 1:
            problems.append(f"config.sample.{name} must be >= 1, got {sample[name]}")
    if vocab is not None and isinstance(sample.top_k, int) and sample.top_k > vocab:
        problems.append(f"config.sample.top_k={sample.top_k} is larger than the vocabulary "
                        f"({vocab} tokens); use 0 (off) or at most {vocab}")
    return problems


def mesh_problems(config: Any, mode: str) -> list[str]:
    """The mesh against the devices JAX sees, and every batch that must split over it
    (extraction runs on one device per process and has no mesh)."""
    import jax

    if mode == "extract":
        return []
    from lasad_jax.parallel.mesh import BATCH_AXES, mesh_shape

    try:
        shape = dict(zip(("data", "fsdp", "tensor"), mesh_shape(config.get("mesh"),
                                                                 jax.device_count())))
    except ValueError as e:
        return [str(e)]
    shards = 1
    for axis in BATCH_AXES:
        shards *= shape[axis]
    batches = {}
    if mode == "train":
        batches["config.batch_size"] = config.batch_size
        batches["config.train.eval_batch_size"] = config.train.eval_batch_size
    if mode in ("sample", "evaluate") or (
            mode == "train" and config.train.get("sample_at_end", False)):
        batches["config.sample.batch_size"] = config.sample.batch_size
    return [f"{field}={size} must be a multiple of {shards}, the data-parallel devices "
            f"(config.mesh data x fsdp over {jax.device_count()} devices)"
            for field, size in batches.items() if size >= 1 and size % shards]


def _tokenizer_problems(config: Any, mode: str) -> list[str]:
    from lasad_jax.training.vq.perceptual import perceptual_problems

    if mode != "train":
        return [f"--mode={mode} does not apply to a tokenizer config (config.task="
                "'tokenizer'); train it, then use workdir/tokenizer as the generator "
                "config's tokenizer.checkpoint"]
    problems = perceptual_problems(config.loss.get("perceptual_weight", 1.0),
                                   config.loss.get("perceptual_weights", ""))
    problems += mesh_problems(config, mode)
    if config.batch_size < 1:
        problems.append(f"config.batch_size must be >= 1, got {config.batch_size}")
    return problems


def _eval_problems(config: Any, mode: str) -> list[str]:
    from lasad_jax.convert.inception import WEIGHTS_FILE, WEIGHTS_URL

    if "eval" not in config:
        return [f"--mode={mode} needs a config.eval block (see configs/demo.py)"]
    ev, problems = config.eval, []
    if ev.inception != "random" and not os.path.isfile(ev.inception or ""):
        problems.append(
            f"config.eval.inception={ev.inception!r} is not a file: download {WEIGHTS_URL} "
            f"and convert it with `python -m lasad_jax.convert.inception --torch_weights="
            f"{WEIGHTS_FILE} --out=inception_fid.npz`, or use 'random' to test the pipeline")
    if mode == "evaluate":
        if ev.num_samples < 1:
            problems.append(f"config.eval.num_samples must be >= 1, got {ev.num_samples}")
        if ev.part_size < 1:
            problems.append(f"config.eval.part_size must be >= 1, got {ev.part_size}")
        if ev.reference and not os.path.isfile(ev.reference):
            problems.append(f"config.eval.reference={ev.reference!r} is not a file")
    if mode == "reference_stats" and ev.reference_split not in ("train", "val"):
        problems.append(f"config.eval.reference_split must be 'train' or 'val', got "
                        f"{ev.reference_split!r}")
    if ev.inception_batch_size < 1:
        problems.append(f"config.eval.inception_batch_size must be >= 1, got "
                        f"{ev.inception_batch_size}")
    return problems


CONVERT_HINT = ("get LlamaGen's vq_ds16_c2i.pt and convert it with `python -m "
                "lasad_jax.convert.llamagen_vq --checkpoint vq_ds16_c2i.pt --out DIR`")


def _vq_checkpoint_problems(config: Any, why: str) -> list[str]:
    if config.tokenizer.name != "vq16":
        return []
    ckpt = config.tokenizer.get("checkpoint", "")
    if not ckpt:
        return [f"config.tokenizer.checkpoint is empty: {why} needs the VQ-16 tokenizer "
                f"weights; {CONVERT_HINT}"]
    if not os.path.isdir(ckpt):
        return [f"config.tokenizer.checkpoint={ckpt!r} does not exist: {why} needs the VQ-16 "
                f"tokenizer weights; {CONVERT_HINT}"]
    return []


def check_config(config: Any, mode: str) -> None:
    problems = config_problems(config, mode)
    if problems:
        raise ValueError("the config cannot run:\n  - " + "\n  - ".join(problems))
