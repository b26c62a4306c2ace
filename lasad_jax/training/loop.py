"""`--mode=train`: the training loop, from a config to checkpoints, metrics and samples.

The loop owns the host-side concerns only (data, logging, checkpoints, progress); the
math lives in the jitted `train_step`. The state is created sharded over the mesh of
`config.mesh`, and each process feeds its own slice of every batch (`lasad_jax.parallel`).
It resumes from the newest checkpoint in `workdir/checkpoints` when there is one, and
refuses to save a state whose loss or parameters are not finite, so a divergence never
replaces the last good checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import jax
from absl import logging
from clu import periodic_actions
from flax import nnx
from jax.sharding import Mesh

from lasad_jax.data import build_source, eval_batches, train_iterator
from lasad_jax.models import LASADGen, ModelConfig
from lasad_jax.parallel import build_mesh, global_batch, local_batch_size
from lasad_jax.parallel.batch import global_from_full
from lasad_jax.parallel.rules import describe
from lasad_jax.tokenizers import build_tokenizer
from lasad_jax.tokenizers.geometry import code_geometry
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.metrics import check_saveable, create_writer, report_health
from lasad_jax.training.optimizer import make_optimizer, make_schedule, peak_learning_rate
from lasad_jax.training.preemption import PreemptionGuard
from lasad_jax.training.step import create_train_state, make_eval_step, make_train_step


def build_model(config: Any) -> LASADGen:
    """The model a config describes, sized by its tokenizer and dataset."""
    geometry = code_geometry(config.tokenizer)
    cfg = ModelConfig.from_config(config.model, vocab_size=geometry.vocab_size,
                                  grid=geometry.grid_shape, num_classes=config.data.num_classes)
    return LASADGen(cfg, rngs=nnx.Rngs(config.seed))


def data_tokenizer(config: Any) -> Any:
    """What the data pipeline needs: the tokenizer itself for image datasets (it encodes
    them), the code geometry only for pre-extracted codes."""
    if config.data.name in ("codes", "extracted"):
        return code_geometry(config.tokenizer)
    return build_tokenizer(config.tokenizer)


def state_factory(config: Any, total_steps: int) -> tuple[Any, Callable[[], Any], Any, Any]:
    """(graphdef, `init()` -> initial TrainState, optimizer, schedule) for a run of
    `total_steps`. `init` builds the model itself, so it can run under `jax.jit` with
    sharded outputs (`lasad_jax.parallel.sharded_init`) or `jax.eval_shape`; the graph
    definition comes from an abstract model and costs no memory."""
    schedule = make_schedule(config.optimizer, batch_size=config.batch_size,
                             total_steps=total_steps)
    tx = make_optimizer(config.optimizer, schedule)
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(config)), nnx.Param)[0]

    def init() -> Any:
        return create_train_state(build_model(config), tx, config.seed)[1]

    return graphdef, init, tx, schedule


def make_state(config: Any, total_steps: int) -> tuple[Any, Any, Any, Any]:
    """(graphdef, initial TrainState, optimizer, schedule) on the default device: for
    tests and notebooks; training builds the state sharded instead."""
    graphdef, init, tx, schedule = state_factory(config, total_steps)
    return graphdef, init(), tx, schedule


def total_steps(config: Any, num_examples: int) -> int:
    if config.num_steps:
        return int(config.num_steps)
    if not config.num_epochs:
        raise ValueError("set config.num_steps or config.num_epochs (both are 0/None)")
    return int(math.ceil(config.num_epochs * num_examples / config.batch_size))


def evaluate(eval_step, params, source, batch_size: int, mesh: Mesh) -> float:
    """Validation loss in bits per token over the whole split. Every process walks the
    same batches; each device evaluates its rows of them."""
    total, count = 0.0, 0.0
    for batch in eval_batches(source, batch_size=batch_size):
        s, n = eval_step(params, global_from_full(batch, mesh))
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0) / math.log(2.0)


def flat_hparams(tree: dict, prefix: str = "") -> dict[str, Any]:
    """`{"model": {"dim": 96}}` -> `{"model.dim": 96}`; non-scalars become strings, as
    TensorBoard's hparams plugin takes scalars only."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        else:
            keep = isinstance(value, (int, float, str, bool))
            flat[prefix + key] = value if keep else str(value)
    return flat


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
    """Trains for the configured number of steps; returns the final metrics."""
    os.makedirs(workdir, exist_ok=True)
    tokenizer = data_tokenizer(config)
    num_classes = config.data.num_classes
    train_source = build_source(config.data, "train", tokenizer, num_classes=num_classes)
    val_source = (build_source(config.data, "val", tokenizer, num_classes=num_classes)
                  if config.train.eval_every >= 0 else None)
    steps = total_steps(config, len(train_source))
    mesh = build_mesh(config.get("mesh"))
    local_size = local_batch_size(config.batch_size, mesh)
    local_batch_size(config.train.eval_batch_size, mesh, "config.train.eval_batch_size")

    graphdef, init, tx, schedule = state_factory(config, steps)
    train_iter = train_iterator(train_source, batch_size=local_size, seed=config.seed)

    checkpointer, state, start, shardings = ckpt_lib.resume_or_start(
        workdir, config.train, init, mesh, train_iter)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("mesh %s over %d devices in %d processes (%s)", describe(mesh), mesh.size,
                 jax.process_count(), jax.devices()[0].platform)
    logging.info("model: %s mixer, %.2fM parameters, grid %s, vocab %d; %d train / %s val "
                 "examples; %d steps of batch %d, peak lr %.3g", config.model.mixer,
                 n_params / 1e6, code_geometry(config.tokenizer).grid_shape,
                 code_geometry(config.tokenizer).vocab_size, len(train_source),
                 len(val_source) if val_source is not None else "no", steps,
                 config.batch_size, peak_learning_rate(config.optimizer, config.batch_size))

    null_class = num_classes
    policy = config.train.get("nonfinite", "halt")
    reported_skips = int(jax.device_get(state.skipped))
    train_step = make_train_step(graphdef, tx, schedule, class_dropout=config.train.class_dropout,
                                 null_class=null_class, ema_decay=config.train.ema_decay,
                                 state_shardings=shardings, nonfinite=policy)
    eval_step = make_eval_step(graphdef)
    writer = create_writer(workdir, resume_step=start)
    if start == 0:
        writer.write_hparams(flat_hparams(config.to_dict()))
    # Progress (steps/s, ETA) goes to the console only; metrics.jsonl keeps one row per
    # logged step, each with the training scalars (and validation when evaluated).
    progress = periodic_actions.ReportProgress(
        num_train_steps=steps, every_secs=config.train.progress_every_secs)

    final: dict[str, float] = {}
    last_time, last_step = time.perf_counter(), start
    # `stop_after` ends this process early (a time-limited job) without changing the
    # schedule, which is always laid out over `steps`.
    stop = min(config.train.stop_after or steps, steps)
    guard = PreemptionGuard()
    preempted = False
    if start >= stop:
        logging.info("the checkpoint is at step %d, the run ends at %d: nothing to train",
                     start, stop)
    with checkpointer, guard, jax.set_mesh(mesh):
        for step in range(start + 1, stop + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, global_batch(next(train_iter), mesh))
            progress(step)
            preempted = guard.reached(step)  # read once: a signal may land mid-iteration
            is_last = step == stop or preempted
            eval_now = val_source is not None and (step == stop or (
                config.train.eval_every > 0 and step % config.train.eval_every == 0))
            if eval_now or is_last or step % config.train.log_every == 0:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                reported_skips = report_health(step, values, policy=policy,
                                               reported_skips=reported_skips)
                values["steps_per_sec"] = (step - last_step) / (time.perf_counter() - last_time)
                if eval_now:
                    values["val_bits_per_token"] = evaluate(
                        eval_step, state.params, val_source, config.train.eval_batch_size, mesh)
                    values["val_bits_per_token_ema"] = evaluate(
                        eval_step, state.ema_params, val_source, config.train.eval_batch_size,
                        mesh)
                    logging.info("step %d: validation %.4f bits/token (EMA %.4f)", step,
                                 values["val_bits_per_token"], values["val_bits_per_token_ema"])
                writer.write_scalars(step, values)
                final.update(values)
                last_time, last_step = time.perf_counter(), step
            if is_last or step % config.train.checkpoint_every == 0:
                check_saveable(step, metrics)
                checkpointer.save(step, state, train_iter, force=is_last)
            if preempted:
                logging.warning("preempted: saved step %d in %s; rerun the same command to "
                                "resume", step, checkpointer.directory)
                break
    writer.flush()

    if config.train.sample_at_end and not preempted:
        from lasad_jax.sampling.job import sample_to_files  # sampling needs the tokenizer

        # Every process takes part in generation (the batch is split over all devices);
        # process 0 writes the files.
        model = nnx.merge(graphdef, state.ema_params if config.sample.use_ema else state.params)
        paths = sample_to_files(model, build_tokenizer(config.tokenizer), config.sample,
                                num_classes=num_classes, out_dir=workdir, mesh=mesh)
        if paths:
            logging.info("samples: %s", ", ".join(paths.values()))
    return final
