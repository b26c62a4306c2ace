"""The host loop every training task runs: step, metrics, evaluation, checkpoints, preemption.

The math lives in a jitted step (`state, batch -> state, metrics`); this loop owns only
the host side, the same for the generator and the tokenizer: it feeds each process's
slice of the data into global batches, logs every `log_every` steps (`metrics.jsonl`,
TensorBoard, the console; a progress line with `steps_per_sec` and the ETA at most every
`progress_every_secs`), evaluates every `eval_every` steps and at the end (scalars, and
images for TensorBoard), saves every `checkpoint_every` steps, and on SIGTERM saves the
step in flight and returns.
A state that is not finite is never saved, so a divergence never replaces the last good
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from lasad_jax.parallel import global_batch
from lasad_jax.training.checkpoint import Checkpointer
from lasad_jax.training.config import LoopConfig
from lasad_jax.training.metrics import check_saveable, report_health
from lasad_jax.training.preemption import PreemptionGuard


def run_length(*, num_steps: int, num_epochs: int, batch_size: int, num_examples: int) -> int:
    """Steps of the whole run: `num_steps` when set, else `num_epochs` passes over the
    data in batches of `batch_size`."""
    if num_steps:
        return int(num_steps)
    if not num_epochs:
        raise ValueError("set config.num_steps or config.num_epochs (both are 0)")
    return int(math.ceil(num_epochs * num_examples / batch_size))


@dataclasses.dataclass
class LoopResult:
    state: Any
    metrics: dict[str, float]  # the last logged value of every metric
    preempted: bool            # stopped by SIGTERM, after saving the step in flight
    step: int = 0              # the step the state is at
    trained: int = 0           # steps this process ran (0: the run was already done)
    seconds: float = 0.0       # wall time of the loop


Evaluation = tuple[dict[str, float], dict[str, np.ndarray]]


class Throughput:
    """The one `steps_per_sec`: training steps per second of wall time between two
    logged rows, the evaluation of the earlier row left out. The console's progress
    line, `metrics.jsonl` and TensorBoard all show this number."""

    def __init__(self, step: int):
        self.step, self.time = step, time.perf_counter()

    def rate(self, step: int) -> float:
        return (step - self.step) / max(time.perf_counter() - self.time, 1e-9)

    def restart(self, step: int) -> None:
        self.step, self.time = step, time.perf_counter()


def duration(seconds: float) -> str:
    """`3h 02m`, `5m 22s`, `41s`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_line(step: int, total: int, steps_per_sec: float) -> str:
    left = (total - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
    eta = duration(left) if math.isfinite(left) else "?"
    return (f"step {step}/{total} ({100 * step / total:.1f}%): {steps_per_sec:.2f} steps/s, "
            f"ETA {eta}")


def train_loop(state: Any, train_step: Callable[[Any, dict], tuple[Any, dict]],
               data: Iterator[dict], *, loop: LoopConfig, start: int, total_steps: int,
               mesh: Mesh, checkpointer: Checkpointer, workdir: str,
               evaluate: Callable[[Any, int], Evaluation] | None = None,
               nonfinite: str | None = None,
               hparams: dict[str, Any] | None = None) -> LoopResult:
    """Runs steps `start + 1 ..` up to `total_steps` (or `loop.stop_after`).

    `data` is the process's batch iterator; its position is saved with each checkpoint.
    `evaluate(state, step)` returns validation scalars and images (a sample grid,
    reconstructions) for TensorBoard; None: no evaluation. `train_step`'s metrics carry
    `state_finite` (and, for the generator, the skip counters of its `nonfinite`
    policy; None: the task has none and halts): the loop halts on a non-finite value
    unless the step skips such updates itself, and it never saves a non-finite state.

    The metric writers (`metrics.jsonl`, TensorBoard; `hparams` on a fresh run) are
    opened only when there are steps to run: a finished run started again changes no
    file in `workdir`.
    """
    # `stop_after` ends this process early (a time-limited job) without changing the
    # schedule, which is always laid out over `total_steps`.
    stop = min(loop.stop_after or total_steps, total_steps)
    if start >= stop:
        logging.info("the checkpoint is at step %d, the run ends at %d: nothing to train",
                     start, stop)
        checkpointer.close()
        return LoopResult(state=state, metrics={}, preempted=False, step=start)
    # A full disk stops the run now, before anything is written, not at its first save.
    checkpointer.require_space(state, "the checkpoints of this run")
    # Imported here: its clu imports TensorFlow, which only a run that trains needs.
    from lasad_jax.training.writers import create_writer

    writer = create_writer(workdir, resume_step=start)
    if start == 0 and hparams:
        writer.write_hparams(hparams)
    reported_skips = int(jax.device_get(getattr(state, "skipped", 0)))
    final: dict[str, float] = {}
    began = time.perf_counter()
    meter = Throughput(start)
    last_progress = -math.inf
    guard = PreemptionGuard()
    preempted = False
    step = start
    with checkpointer, guard, jax.set_mesh(mesh):
        for step in range(start + 1, stop + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, global_batch(next(data), mesh))
            preempted = guard.reached(step)  # read once: a signal may land mid-iteration
            is_last = step == stop or preempted
            eval_now = evaluate is not None and (step == stop or (
                loop.eval_every > 0 and step % loop.eval_every == 0))
            if eval_now or is_last or step % loop.log_every == 0:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                reported_skips = report_health(step, values, policy=nonfinite,
                                               reported_skips=reported_skips)
                values["steps_per_sec"] = meter.rate(step)
                if is_last or time.perf_counter() - last_progress >= loop.progress_every_secs:
                    logging.info("%s", progress_line(step, total_steps, values["steps_per_sec"]))
                    last_progress = time.perf_counter()
                if eval_now:
                    scalars, images = evaluate(state, step)
                    values.update(scalars)
                    if images:
                        writer.write_images(step, images)
                writer.write_scalars(step, values)
                final.update(values)
                meter.restart(step)
            if is_last or step % loop.checkpoint_every == 0:
                check_saveable(step, metrics, nonfinite)
                checkpointer.save(step, state, data, force=is_last)
            if preempted:
                logging.warning("preempted: saved step %d in %s; rerun the same command to "
                                "resume", step, checkpointer.directory)
                break
    writer.flush()
    writer.close()
    return LoopResult(state=state, metrics=final, preempted=preempted, step=step,
                      trained=step - start, seconds=time.perf_counter() - began)


def summary(result: LoopResult, total_steps: int, checkpoints: str,
            outputs: list[str] = ()) -> str:
    """The run's last line: where it stands, how fast it went, its last validation
    numbers and what it wrote."""
    if not result.trained:
        head = f"done: the run is at step {result.step}/{total_steps}, nothing was trained"
    else:
        where = ("finished" if result.step == total_steps else
                 "preempted" if result.preempted else "stopped (train.stop_after)")
        head = (f"{where} at step {result.step}/{total_steps}: {result.trained} steps in "
                f"{duration(result.seconds)} ({result.trained / max(result.seconds, 1e-9):.2f} "
                "steps/s with evaluations and saves)")
    shown = [f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())
             if k.startswith("val_") or k == "loss"]
    parts = [head] + ([", ".join(shown)] if shown else []) + [f"checkpoints in {checkpoints}"]
    return "; ".join(parts + list(outputs))
