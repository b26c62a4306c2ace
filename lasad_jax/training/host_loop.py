"""The host loop every training task runs: step, metrics, evaluation, checkpoints, preemption.

The math lives in a jitted step (`state, batch -> state, metrics`); this loop owns only
the host side, the same for the generator and the tokenizer: it feeds each process's
slice of the data into global batches, logs every `log_every` steps (`metrics.jsonl`,
TensorBoard, the console), evaluates every `eval_every` steps and at the end, saves
every `checkpoint_every` steps, and on SIGTERM saves the step in flight and returns.
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
from absl import logging
from clu import metric_writers, periodic_actions
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


def train_loop(state: Any, train_step: Callable[[Any, dict], tuple[Any, dict]],
               data: Iterator[dict], *, loop: LoopConfig, start: int, total_steps: int,
               mesh: Mesh, checkpointer: Checkpointer, writer: metric_writers.MetricWriter,
               evaluate: Callable[[Any, int], dict[str, float]] | None = None,
               nonfinite: str | None = None) -> LoopResult:
    """Runs steps `start + 1 ..` up to `total_steps` (or `loop.stop_after`).

    `data` is the process's batch iterator; its position is saved with each checkpoint.
    `evaluate(state, step)` returns validation scalars (None: no evaluation). `train_step`'s
    metrics carry `state_finite` (and, for the generator, the skip counters of its
    `nonfinite` policy; None: the task has none and halts): the loop halts on a
    non-finite value unless the step skips such updates itself, and it never saves a
    non-finite state.
    """
    # `stop_after` ends this process early (a time-limited job) without changing the
    # schedule, which is always laid out over `total_steps`.
    stop = min(loop.stop_after or total_steps, total_steps)
    if start >= stop:
        logging.info("the checkpoint is at step %d, the run ends at %d: nothing to train",
                     start, stop)
    # Progress (steps/s, ETA) goes to the console only; metrics.jsonl keeps one row per
    # logged step, each with the training scalars (and validation when evaluated).
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                               every_secs=loop.progress_every_secs)
    reported_skips = int(jax.device_get(getattr(state, "skipped", 0)))
    final: dict[str, float] = {}
    last_time, last_step = time.perf_counter(), start
    guard = PreemptionGuard()
    preempted = False
    with checkpointer, guard, jax.set_mesh(mesh):
        for step in range(start + 1, stop + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, global_batch(next(data), mesh))
            progress(step)
            preempted = guard.reached(step)  # read once: a signal may land mid-iteration
            is_last = step == stop or preempted
            eval_now = evaluate is not None and (step == stop or (
                loop.eval_every > 0 and step % loop.eval_every == 0))
            if eval_now or is_last or step % loop.log_every == 0:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                reported_skips = report_health(step, values, policy=nonfinite,
                                               reported_skips=reported_skips)
                values["steps_per_sec"] = (step - last_step) / (time.perf_counter() - last_time)
                if eval_now:
                    values.update(evaluate(state, step))
                writer.write_scalars(step, values)
                final.update(values)
                last_time, last_step = time.perf_counter(), step
            if is_last or step % loop.checkpoint_every == 0:
                check_saveable(step, metrics, nonfinite)
                checkpointer.save(step, state, data, force=is_last)
            if preempted:
                logging.warning("preempted: saved step %d in %s; rerun the same command to "
                                "resume", step, checkpointer.directory)
                break
    writer.flush()
    return LoopResult(state=state, metrics=final, preempted=preempted)
