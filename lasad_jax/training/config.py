"""The `optimizer` and `train` blocks of a config.

`LoopConfig` holds what the host loop reads (logging, evaluation and checkpoint
cadence, when to stop); the generator's `TrainConfig` and the tokenizer's
`TokenizerTrainConfig` add their own fields to it. Each block checks its fields when
built and reports every problem at once.
"""

from __future__ import annotations

import dataclasses

from lasad_jax.training.step import NONFINITE_POLICIES
from lasad_jax.validation import Problems, is_int

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup, a schedule and global-norm clipping; LlamaGen's recipe.

    `lr` is per 256 images: a run uses `lr * batch_size / 256`, so changing the batch
    keeps the recipe. After `warmup_steps` of linear warmup, `schedule` holds the peak
    ("constant") or decays it to `end_lr_fraction` of the peak ("cosine", "linear")."""

    lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    end_lr_fraction: float = 1.0

    def __post_init__(self) -> None:
        p = Problems("optimizer")
        p.number("lr", self.lr, low=0.0, low_open=True)
        for name in ("b1", "b2"):
            p.number(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        p.number("eps", self.eps, low=0.0, low_open=True)
        p.number("weight_decay", self.weight_decay, low=0.0)
        p.number("grad_clip", self.grad_clip, low=0.0, low_open=True)
        p.one_of("schedule", self.schedule, SCHEDULES)
        p.int_at_least("warmup_steps", self.warmup_steps, 0)
        if p.number("end_lr_fraction", self.end_lr_fraction, low=0.0, high=1.0):
            p.check(self.schedule not in ("cosine", "linear") or self.end_lr_fraction < 1.0,
                    "end_lr_fraction", f"must be below 1 for schedule={self.schedule!r}, "
                    "which would otherwise never decay (0 decays to zero); or use "
                    "schedule='constant'")
            p.check(self.schedule != "constant" or self.end_lr_fraction == 1.0,
                    "end_lr_fraction", f"({self.end_lr_fraction!r}) has no effect with "
                    "schedule='constant'; set schedule='cosine' or 'linear' to decay to it, "
                    "or leave it at 1.0")
        p.raise_if_any()


def schedule_problems(optimizer: OptimizerConfig, num_steps: int) -> list[str]:
    """The warmup must fit in the run (known here when the run is given in steps; a run
    given in epochs is checked once the dataset's size is known)."""
    if num_steps > 0 and optimizer.warmup_steps > num_steps:
        return [f"optimizer.warmup_steps={optimizer.warmup_steps} is longer than the run "
                f"(num_steps={num_steps})"]
    return []


def accumulation_problems(batch_size: object, grad_accum_steps: int,
                          shards: int | None) -> list[str]:
    """A step's batch must split into `grad_accum_steps` equal micro-batches, each split
    evenly over the `shards` data-parallel devices (None: unknown, not checked)."""
    if not (is_int(batch_size) and batch_size >= 1) or grad_accum_steps == 1:
        return []
    if batch_size % grad_accum_steps:
        return [f"train.grad_accum_steps={grad_accum_steps} must divide batch_size="
                f"{batch_size}: each step's batch is split into that many equal "
                "micro-batches"]
    micro = batch_size // grad_accum_steps
    if shards and micro % shards:
        return [f"train.grad_accum_steps={grad_accum_steps} leaves micro-batches of {micro} "
                f"examples (batch_size={batch_size}), which must be a multiple of {shards}, "
                "the data-parallel devices (mesh data x fsdp); lower grad_accum_steps"]
    return []


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What the host loop reads. `eval_every`: -1 never evaluates, 0 only at the end, n
    every n steps and at the end, which a `stop_after` stop is too (each time-limited
    chunk reports its validation). `stop_after` > 0 ends this process at that step (a
    time-limited job) without changing the schedule."""

    log_every: int = 100
    eval_every: int = -1
    eval_batch_size: int = 256
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    stop_after: int = 0
    progress_every_secs: float = 60.0

    def __post_init__(self) -> None:
        p = Problems("train")
        self._check(p)
        p.raise_if_any()

    def _check(self, p: Problems) -> None:
        for name in ("log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            p.int_at_least(name, getattr(self, name), 1)
        p.int_at_least("eval_every", self.eval_every, -1)
        p.int_at_least("stop_after", self.stop_after, 0)
        p.number("progress_every_secs", self.progress_every_secs, low=0.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The generator's training: class dropout (the null class that classifier-free
    guidance needs), the EMA, samples at the end, what a non-finite update does ("halt"
    stops before anything is saved; "skip" drops that update and goes on), and gradient
    accumulation: `grad_accum_steps` micro-batches of `batch_size / grad_accum_steps`
    examples per step, one update from their averaged gradients
    (`training.step.accumulate`), for a batch whose activations do not fit at once."""

    class_dropout: float = 0.1
    ema_decay: float = 0.9999
    sample_at_end: bool = False
    nonfinite: str = "halt"
    grad_accum_steps: int = 1

    def _check(self, p: Problems) -> None:
        super()._check(p)
        p.number("class_dropout", self.class_dropout, low=0.0, high=1.0)
        p.number("ema_decay", self.ema_decay, low=0.0, high=1.0)
        p.check(isinstance(self.sample_at_end, bool), "sample_at_end",
                f"must be True or False, got {self.sample_at_end!r}")
        p.one_of("nonfinite", self.nonfinite, NONFINITE_POLICIES)
        p.int_at_least("grad_accum_steps", self.grad_accum_steps, 1)


@dataclasses.dataclass(frozen=True)
class TokenizerTrainConfig(LoopConfig):
    """The tokenizer's training: the image size it trains at, how many validation images
    it scores, and the scale of the reconstructions grid. Its end is always evaluated,
    whatever `eval_every` says (-1 and 0 alike): the export writes its reconstructions
    (`reconstructions.png`) beside the weights."""

    eval_every: int = 5000
    eval_batch_size: int = 64
    image_size: int = 256
    eval_images: int = 5000
    grid_scale: int = 1

    def _check(self, p: Problems) -> None:
        super()._check(p)
        for name in ("image_size", "eval_images", "grid_scale"):
            p.positive_int(name, getattr(self, name))
