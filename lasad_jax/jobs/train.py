"""`--mode=train` of a generator config: checkpoints, metrics and, at the end, samples.

The state is created sharded over the mesh of `config.mesh` (or restored from the
newest checkpoint in `workdir/checkpoints`), each process feeds its own slice of every
batch, and the host loop (`lasad_jax.training.host_loop`) runs the jitted step.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging
from flax import nnx

from lasad_jax.config import GeneratorRun
from lasad_jax.data import build_source, train_iterator
from lasad_jax.data.config import EMBEDDED
from lasad_jax.parallel import build_mesh, local_batch_size
from lasad_jax.parallel.rules import describe
from lasad_jax.sampling.sampler import sample_to_files
from lasad_jax.tokenizers import build_tokenizer
from lasad_jax.training.checkpoint import resume_or_start
from lasad_jax.training.generator import bits_per_token, state_factory
from lasad_jax.training.host_loop import run_length, train_loop
from lasad_jax.training.metrics import create_writer, flat_hparams
from lasad_jax.training.optimizer import peak_learning_rate
from lasad_jax.training.step import make_eval_step, make_train_step


def run(config: GeneratorRun, workdir: str) -> dict[str, float]:
    """Trains for the configured number of steps; returns the final metrics."""
    os.makedirs(workdir, exist_ok=True)
    # Image datasets are tokenized on the fly; code datasets need only the code geometry.
    tokenizer = (build_tokenizer(config.tokenizer) if config.data.name in EMBEDDED
                 else config.geometry)
    train_source = build_source(config.data, "train", tokenizer)
    val_source = (build_source(config.data, "val", tokenizer)
                  if config.train.eval_every >= 0 else None)
    steps = run_length(num_steps=config.num_steps, num_epochs=config.num_epochs,
                       batch_size=config.batch_size, num_examples=len(train_source))
    mesh = build_mesh(config.mesh)
    graphdef, init, tx, schedule = state_factory(
        config.model, config.optimizer, batch_size=config.batch_size, seed=config.seed,
        total_steps=steps)
    train_iter = train_iterator(train_source, batch_size=local_batch_size(
        config.batch_size, mesh), seed=config.seed)
    checkpointer, state, start, shardings = resume_or_start(workdir, config.train, init, mesh,
                                                            train_iter)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("mesh %s over %d devices in %d processes (%s)", describe(mesh), mesh.size,
                 jax.process_count(), jax.devices()[0].platform)
    logging.info("model: %s mixer, %.2fM parameters, grid %s, vocab %d; %d train / %s val "
                 "examples; %d steps of batch %d, peak lr %.3g", config.model.mixer,
                 n_params / 1e6, config.model.grid, config.model.vocab_size, len(train_source),
                 len(val_source) if val_source is not None else "no", steps,
                 config.batch_size, peak_learning_rate(config.optimizer, config.batch_size))

    train_step = make_train_step(graphdef, tx, schedule, class_dropout=config.train.class_dropout,
                                 null_class=config.data.num_classes,
                                 ema_decay=config.train.ema_decay, state_shardings=shardings,
                                 nonfinite=config.train.nonfinite)
    eval_step = make_eval_step(graphdef)

    def evaluate(state, step: int) -> dict[str, float]:
        values = {name: bits_per_token(eval_step, params, val_source,
                                       config.train.eval_batch_size, mesh)
                  for name, params in (("val_bits_per_token", state.params),
                                       ("val_bits_per_token_ema", state.ema_params))}
        logging.info("step %d: validation %.4f bits/token (EMA %.4f)", step,
                     values["val_bits_per_token"], values["val_bits_per_token_ema"])
        return values

    writer = create_writer(workdir, resume_step=start)
    if start == 0:
        writer.write_hparams(flat_hparams(dataclasses.asdict(config)))
    result = train_loop(state, train_step, train_iter, loop=config.train, start=start,
                        total_steps=steps, mesh=mesh, checkpointer=checkpointer,
                        writer=writer, evaluate=evaluate if val_source is not None else None,
                        nonfinite=config.train.nonfinite)

    if config.train.sample_at_end and not result.preempted:
        # Every process takes part in generation (the batch is split over all devices);
        # process 0 writes the files.
        state = result.state
        model = nnx.merge(graphdef, state.ema_params if config.sample.use_ema else state.params)
        paths = sample_to_files(model, build_tokenizer(config.tokenizer), config.sample,
                                num_classes=config.data.num_classes, out_dir=workdir, mesh=mesh)
        if paths:
            logging.info("samples: %s", ", ".join(paths.values()))
    return result.metrics
