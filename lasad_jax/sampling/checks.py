"""The checks on what to sample, shared by the config and the Python API.

`SampleConfig` (the `sample` block, checked when a config is parsed) and `generate`
(called from Python) apply these same functions, so a bad value gets the same message
whichever way it came in; only the name of the thing differs (`sample.top_p` in a
config, `top_p` in a call; `sample.classes` or `labels`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from lasad_jax.validation import ConfigError


# The smallest temperature: the logits are divided by it in float32, and below about
# 1e-37 they overflow to inf (NaN after the softmax), which draws a wrong token instead
# of the most likely one. 1e-6 keeps any sane logit finite.
MIN_TEMPERATURE = 1e-6


def is_integer(value: Any) -> bool:
    """An integer of any kind (Python's or numpy's) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A real number of any kind (numpy's scalars too) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def sampling_problems(*, cfg_scale: Any, temperature: Any, top_k: Any, top_p: Any) -> list[str]:
    """One line per bad sampling argument (all of them, not the first only). numpy
    scalars count as numbers: callers convert with int()/float()."""
    problems = []
    arrays = {name: value for name, value in (("cfg_scale", cfg_scale), ("temperature",
              temperature), ("top_k", top_k), ("top_p", top_p))
              if hasattr(value, "shape") and not isinstance(value, np.generic)}
    if arrays:  # a jax scalar: the settings are static arguments of the compiled sampler
        return [f"{name} must be a Python or numpy number, not an array; got {value!r} (use "
                "float() or int())" for name, value in arrays.items()]
    if not (is_real(temperature) and temperature > 0):
        problems.append(f"temperature must be > 0 (use top_k=1 for greedy), got {temperature!r}")
    elif not math.isfinite(temperature):
        problems.append(f"temperature must be finite, got {temperature!r}")
    elif temperature < MIN_TEMPERATURE:
        problems.append(f"temperature must be >= 1e-6 (smaller ones overflow the logits; for "
                        f"greedy decoding use top_k=1), got {temperature!r}")
    if not (is_integer(top_k) and top_k >= 0):
        problems.append(f"top_k must be an int >= 0 (0: off), got {top_k!r}")
    if not (is_real(top_p) and 0.0 < top_p <= 1.0):
        problems.append(f"top_p must be in (0, 1] (1.0: off), got {top_p!r}")
    if not (is_real(cfg_scale) and math.isfinite(cfg_scale) and cfg_scale >= 0):
        problems.append(f"cfg_scale must be finite and >= 0 (1.0: no guidance), "
                        f"got {cfg_scale!r}")
    return problems


def top_k_problems(top_k: Any, vocab_size: int, name: str = "top_k") -> list[str]:
    """Top-k must fit the vocabulary (a larger k would silently mean "off")."""
    if is_integer(top_k) and top_k > vocab_size:
        return [f"{name}={top_k} is larger than the vocabulary ({vocab_size} tokens); use 0 "
                f"(off) or at most {vocab_size}"]
    return []


def class_problems(classes: Any, num_classes: int, name: str) -> list[str]:
    """The class ids must be real classes: [0, num_classes). `num_classes` itself is the
    null class of guidance, which only `cfg_scale` draws from."""
    values = np.asarray(classes)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        return [f"{name} must be integer class ids in [0, {num_classes}), got dtype "
                f"{values.dtype}"]
    bad = np.unique(values[(values < 0) | (values >= num_classes)]).tolist()
    if bad:
        null = (f" ({num_classes} is the null class of guidance, used only by cfg_scale)"
                if num_classes in bad else "")
        return [f"{name} must be class ids in [0, {num_classes}){null}, got {bad}"]
    return []


def check_generate_args(model_cfg: Any, labels: Any, *, cfg_scale: Any, temperature: Any,
                        top_k: Any, top_p: Any) -> None:
    """What `generate` checks before it compiles anything: the labels (1-D, real
    classes of `model_cfg`) and the sampling arguments; `ConfigError` (a ValueError)
    listing every problem."""
    problems = []
    shape = np.shape(labels)
    if len(shape) != 1:
        problems.append(f"labels must be a 1-D array of class ids, got shape {shape}")
    elif shape[0] == 0:
        problems.append("labels must hold at least one class id, got an empty array")
    else:
        problems += class_problems(labels, model_cfg.num_classes, "labels")
    problems += sampling_problems(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                  top_p=top_p)
    problems += top_k_problems(top_k, model_cfg.vocab_size)
    if problems:
        raise ConfigError(problems)
