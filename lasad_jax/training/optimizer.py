"""AdamW with warmup, a schedule, clipping and LlamaGen's weight-decay mask (optax)."""

from __future__ import annotations

from typing import Any

import jax
import optax

from lasad_jax.training.config import OptimizerConfig


def peak_learning_rate(cfg: OptimizerConfig, batch_size: int) -> float:
    """`cfg.lr` is per 256 images (LlamaGen's convention): the run uses lr * batch / 256,
    so changing the batch size keeps the recipe."""
    return float(cfg.lr) * batch_size / 256


def make_schedule(cfg: OptimizerConfig, *, batch_size: int,
                  total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 over `cfg.warmup_steps`, then `cfg.schedule` until
    `total_steps` (cosine and linear decay to `cfg.end_lr_fraction` of the peak).

    The step reads the rate at its 0-based `state.step`, optax's convention: with warmup
    the first update has rate 0 (Adam's moments still take its gradient), and the last
    update, number `total_steps - 1`, is one step short of the end value (the step
    logged as `learning_rate` is the rate its update used)."""
    if cfg.warmup_steps > total_steps:
        raise ValueError(f"optimizer.warmup_steps must be in [0, {total_steps}] (the run's "
                         f"steps), got {cfg.warmup_steps}")
    peak = peak_learning_rate(cfg, batch_size)
    end = peak * cfg.end_lr_fraction
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
    else:
        main = optax.linear_schedule(peak, end, decay_steps)
    if not cfg.warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and embeddings only (>= 2-D), not on norm scales or
    the per-head decay logits (LlamaGen's rule)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )
