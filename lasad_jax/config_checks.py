"""Fail-fast checks of a whole config before any model is built or data is read.

Each problem names the config field and what to do about it; all problems are reported
together, so a user fixes a config in one round trip, not one error at a time.
"""

from __future__ import annotations

import os
from typing import Any

from lasad_jax.data.codes import code_paths


def config_problems(config: Any, mode: str) -> list[str]:
    problems = []
    if config.batch_size < 1:
        problems.append(f"config.batch_size must be >= 1, got {config.batch_size}")
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
                problems.append(f"config.data.codes_dir={codes_dir!r} lacks {[str(p) for p in missing]}")
    needs_tokenizer = mode == "sample" or config.train.sample_at_end
    if needs_tokenizer and config.tokenizer.name == "vq16":
        ckpt = config.tokenizer.get("checkpoint", "")
        where = f" (config.tokenizer.checkpoint={ckpt!r})" if ckpt else ""
        problems.append(
            "decoding samples needs the VQ-16 tokenizer" + where + ", which arrives with the "
            "[tokenizer] issue and is not in this version; train with "
            "config.train.sample_at_end=False")
    return problems


def check_config(config: Any, mode: str) -> None:
    problems = config_problems(config, mode)
    if problems:
        raise ValueError("the config cannot run:\n  - " + "\n  - ".join(problems))
