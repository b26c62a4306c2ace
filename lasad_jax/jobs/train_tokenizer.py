"""`--mode=train` of a tokenizer config (`task="tokenizer"`): trains the VQ tokenizer.

The same host loop as the generator's (checkpoints, resume, metrics, preemption) runs the
VQ step (`lasad_jax.training.vq.step`). Each evaluation writes validation images over
their reconstructions to TensorBoard. At the end the tokenizer is exported to
`workdir/tokenizer/`, the format `VQ16Tokenizer` and `--mode=extract` load, and the last
reconstructions to `reconstructions.png`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from lasad_jax.config import TokenizerRun
from lasad_jax.data.image_batches import build_image_dataset, image_train_iterator
from lasad_jax.files import exists, free_name, move, require_writable
from lasad_jax.parallel import build_mesh, local_batch_size, process_0_decides
from lasad_jax.sampling.images import make_grid, save_png
from lasad_jax.tokenizers.vq.weights import save_vq
from lasad_jax.training.checkpoint import data_order, resume_or_start
from lasad_jax.training.host_loop import Evaluation, run_length, summary, train_loop
from lasad_jax.training.optimizer import peak_learning_rate
from lasad_jax.training.vq.step import (
    evaluate_vq,
    make_vq_state,
    make_vq_train_step,
    tokenizer_identity,
)


def run(config: TokenizerRun, workdir: str) -> dict[str, float]:
    """Trains the VQ tokenizer of `config.vq` on `config.data`; returns final metrics."""
    require_writable(workdir)  # a read-only or misnamed workdir fails before any work
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
    checkpointer, state, start, shardings = resume_or_start(
        workdir, config.train, state, mesh, train_iter,
        identity=dict(tokenizer_identity(config.vq, config.loss), data_order=data_order(
            batch_size=config.batch_size, seed=config.seed, train_examples=len(train_source),
            split_seed=config.data.seed if config.data.name == "digits" else None,
            dataset=train_source.fingerprint)))
    codes = size // config.vq.downsample_factor
    logging.info("tokenizer: %.2fM parameters, %d px -> %d x %d codes, codebook %d; %d train "
                 "/ %d val images; %d steps of batch %d, peak lr %.3g, GAN from step %d",
                 sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, size, codes, codes,
                 config.vq.codebook_size, len(train_source), len(val_source), steps,
                 config.batch_size, peak_learning_rate(config.optimizer, config.batch_size),
                 config.loss.disc_start)
    train_step = make_vq_train_step(defs, tx, schedule, config.loss, lpips, shardings)
    pairs: list[np.ndarray] = []  # the last evaluation's first images and reconstructions

    def grid(first: np.ndarray) -> np.ndarray:
        return make_grid(first, cols=len(first) // 2, scale=config.train.grid_scale)

    def evaluate(state, step: int) -> Evaluation:
        values, first = evaluate_vq(defs[0], state.params, val_source, config.train, mesh)
        pairs[:] = [first]
        logging.info("step %d: validation PSNR %.2f dB, codebook used %.1f%%", step,
                     values["val_psnr"], 100 * values["val_codebook_used"])
        return values, {"reconstructions": grid(first)[None]}

    result = train_loop(state, train_step, train_iter, loop=config.train, start=start,
                        total_steps=steps, mesh=mesh, checkpointer=checkpointer, workdir=workdir,
                        evaluate=evaluate)
    export = os.path.join(workdir, "tokenizer")
    picture = os.path.join(workdir, "reconstructions.png")
    outputs = []
    # A finished run started again changes nothing, unless it died before its export.
    # Only a finished run exports: not a preempted one, nor a chunk that
    # `train.stop_after` ends early (codes made from such an export would stop matching
    # when the next chunk wrote over it).
    missing = not (exists(os.path.join(export, "vq_config.json")) and exists(picture))
    finished = not result.preempted and result.step >= steps
    if finished and (result.trained or process_0_decides(missing)):
        if not pairs:  # nothing was trained here: evaluate the restored state once
            evaluate(result.state, result.step)
        if jax.process_index() == 0:
            for path in (export, picture):
                # Trained here, so an export already there holds other weights (this run's
                # before it trained further, or an earlier run's whose checkpoints were
                # moved away): codes may have been extracted with it, so it is kept,
                # renamed, not written over. (Untrained, the export is redone with the
                # same weights after a crash in it.)
                if result.trained and exists(path):
                    kept = free_name(path)
                    move(path, kept)
                    logging.warning("%s holds an earlier export: renamed to %s", path, kept)
            save_vq(export, result.state.params, config.vq, source="trained by lasad_jax")
            save_png(picture, grid(pairs[0]))
            logging.info("reconstructions.png: top row inputs, bottom row reconstructions")
        outputs.append(f"tokenizer exported to {export} (use it as config.tokenizer.checkpoint)")
    logging.info("%s", summary(result, steps, checkpointer.directory, outputs))
    return result.metrics
