"""What the host loop does with a step's metrics before they are written: health checks
(non-finite values, skipped updates), and config values flattened for TensorBoard.

The writers themselves are `lasad_jax.training.writers`, apart because clu imports
TensorFlow, which jobs that only read checkpoints should not pay for."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def flat_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"dim": 96}}` -> `{"model.dim": 96}`; non-scalars become strings, as
    TensorBoard's hparams plugin takes scalars only."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        else:
            keep = isinstance(value, (int, float, str, bool))
            flat[prefix + key] = value if keep else str(value)
    return flat


def report_health(step: int, values: dict[str, float], *, policy: str | None,
                  reported_skips: int) -> int:
    """Pops the step's health fields from `values` (in place), logs newly skipped
    non-finite updates with their step, and unless `policy == "skip"` raises on any
    non-finite training value. Returns the number of skips reported so far.

    `policy` is the generator's `train.nonfinite`; None (the tokenizer, which has no
    skip counters) halts like "halt"."""
    values.pop("state_finite", None)
    if "skipped" in values:
        skipped = int(values.pop("skipped"))
        last = int(values.pop("last_skipped", -1))
        if skipped > reported_skips:
            logging.warning("step %d: %d non-finite update(s) skipped since the last report, "
                            "the last at step %d (%d in all)", step, skipped - reported_skips,
                            last, skipped)
        values["skipped_updates"] = float(skipped)
        reported_skips = skipped
    if policy != "skip":
        check_finite(step, values)
    return reported_skips


def check_saveable(step: int, metrics: Mapping[str, Any], policy: str | None) -> None:
    """Refuses to checkpoint a state holding NaN or inf anywhere (parameters, optimizer
    state, EMA), whatever the non-finite policy."""
    if not bool(jax.device_get(metrics["state_finite"])):
        hint = " or set train.nonfinite='skip' to drop non-finite updates" if policy else ""
        raise FloatingPointError(
            f"the training state is not finite at step {step}; refusing to checkpoint it. "
            f"The last good checkpoint is kept; lower optimizer.lr{hint}.")


def check_finite(step: int, values: dict[str, float]) -> None:
    """Raises FloatingPointError, naming the values, before a broken state can be saved."""
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite training values at step {step}: {bad}. The last good checkpoint is "
            "kept; lower optimizer.lr or check the data.")
