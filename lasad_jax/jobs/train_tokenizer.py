"""`--mode=train` of a tokenizer config (`task="tokenizer"`): trains the VQ tokenizer.

The same host loop as the generator's (checkpoints, resume, metrics, preemption) runs the
VQ step (`lasad_jax.training.vq.step`). At the end the tokenizer is exported to
`workdir/tokenizer/`, the format `VQ16Tokenizer` and `--mode=extract` load, and a grid of
validation images over their reconstructions is written.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from lasad_jax.config import TokenizerRun
from lasad_jax.data.image_batches import build_image_dataset, image_train_iterator
from lasad_jax.parallel import build_mesh, local_batch_size
from lasad_jax.sampling.images import make_grid, save_png
from lasad_jax.tokenizers.vq.weights import save_vq
from lasad_jax.training.checkpoint import resume_or_start
from lasad_jax.training.host_loop import run_length, train_loop
from lasad_jax.training.metrics import create_writer
from lasad_jax.training.optimizer import peak_learning_rate
from lasad_jax.training.vq.step import evaluate_vq, make_vq_state, make_vq_train_step


def run(config: TokenizerRun, workdir: str) -> dict[str, float]:
    """Trains the VQ tokenizer of `config.vq` on `config.data`; returns final metrics."""
    os.makedirs(workdir, exist_ok=True)
    size = config.train.image_size
    train_source = build_image_dataset(config.data, "train", size)
    val_source = build_image_dataset(config.data, "val", size)
    steps = run_length(num_steps=config.num_steps, num_epochs=config.num_epochs,
                       batch_size=config.batch_size, num_examples=len(train_source))
    defs, state, tx, schedule, lpips = make_vq_state(
        config.vq, config.loss, config.optimizer, batch_size=config.batch_size,
        seed=config.seed, total_steps=steps)
    mesh = build_mesh(config.mesh)
    train_iter = image_train_iterator(train_source, image_size=size, batch_size=local_batch_size(
        config.batch_size, mesh), seed=config.seed)
    checkpointer, state, start, shardings = resume_or_start(workdir, config.train, state, mesh,
                                                            train_iter)
    codes = size // config.vq.downsample_factor
    logging.info("tokenizer: %.2fM parameters, %d px -> %d x %d codes, codebook %d; %d train "
                 "/ %d val images; %d steps of batch %d, peak lr %.3g, GAN from step %d",
                 sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, size, codes, codes,
                 config.vq.codebook_size, len(train_source), len(val_source), steps,
                 config.batch_size, peak_learning_rate(config.optimizer, config.batch_size),
                 config.loss.disc_start)
    train_step = make_vq_train_step(defs, tx, schedule, config.loss, lpips, shardings)
    pairs: list[np.ndarray] = []  # the last evaluation's first images and reconstructions

    def evaluate(state, step: int) -> dict[str, float]:
        values, first = evaluate_vq(defs[0], state.params, val_source, config.train, mesh)
        pairs[:] = [first]
        logging.info("step %d: validation PSNR %.2f dB, codebook used %.1f%%", step,
                     values["val_psnr"], 100 * values["val_codebook_used"])
        return values

    result = train_loop(state, train_step, train_iter, loop=config.train, start=start,
                        total_steps=steps, mesh=mesh, checkpointer=checkpointer,
                        writer=create_writer(workdir, resume_step=start), evaluate=evaluate)
    if jax.process_index() == 0 and pairs and not result.preempted:
        export = os.path.join(workdir, "tokenizer")
        save_vq(export, result.state.params, config.vq, source="trained by lasad_jax")
        save_png(os.path.join(workdir, "reconstructions.png"),
                 make_grid(pairs[0], cols=len(pairs[0]) // 2, scale=config.train.grid_scale))
        logging.info("tokenizer exported to %s (use it as config.tokenizer.checkpoint); "
                     "reconstructions.png: top row inputs, bottom row reconstructions", export)
    return result.metrics
