"""`--mode=sample`: restore a trained generator, draw the `sample` block's images, and
write `{sample.name}-step{step}-{digest}.png` (one row per class) and `.npz` into the
workdir (`lasad_jax.sampling.sampler.sample_paths`).

Only the weights are read from the checkpoint (EMA or raw, per `sample.use_ema`),
straight into the shardings of `config.mesh`, whatever mesh trained them; no optimizer
is built.
"""

from __future__ import annotations

import dataclasses

from absl import logging
from flax import nnx
from jax.sharding import Mesh

from lasad_jax.config import GeneratorRun
from lasad_jax.jobs import train
from lasad_jax.parallel import build_mesh
from lasad_jax.parallel.rules import describe
from lasad_jax.sampling.interactive import fetch_workdir
from lasad_jax.sampling.sampler import sample_to_files
from lasad_jax.tokenizers import Tokenizer, build_tokenizer
from lasad_jax.training.checkpoint import open_for_reading
from lasad_jax.training.generator import generator_identity, params_target


def restore_model(config: GeneratorRun, workdir: str,
                  tokenizer: Tokenizer) -> tuple[nnx.Module, int, Mesh]:
    """`(model, step, mesh)`: the weights of the newest readable checkpoint in
    `workdir`, which must have been trained by `config.model` on codes of `tokenizer`
    (the one restore path of every job: `Checkpointer.restore_newest`)."""
    identity = generator_identity(config.model, tokenizer.fingerprint)
    checkpointer = open_for_reading(workdir, identity)
    mesh = build_mesh(config.mesh)
    graphdef, target = params_target(config.model, mesh)
    try:
        step, params = checkpointer.restore_params(target, use_ema=config.sample.use_ema)
    finally:
        checkpointer.close()
    logging.info("restored step %d (%s weights) on mesh %s", step,
                 "EMA" if config.sample.use_ema else "raw", describe(mesh))
    return nnx.merge(graphdef, params), step, mesh


def run(config: GeneratorRun, workdir: str) -> dict[str, str]:
    """Restores the newest checkpoint in `workdir` and writes samples next to it, named
    by the checkpoint step and the sampling settings (`sample_paths`): a draw never
    overwrites another, and the same draw again writes nothing."""
    tokenizer = build_tokenizer(config.tokenizer)  # fails fast, before any restore
    model, step, mesh = restore_model(config, workdir, tokenizer)
    return sample_to_files(model, tokenizer, config.sample, num_classes=config.data.num_classes,
                           out_dir=workdir, step=step, mesh=mesh)


def load_or_train(config: GeneratorRun, checkpoint: str, workdir: str) -> tuple[nnx.Module, int]:
    """`(model, step)` for the sampling notebook: the newest checkpoint of the workdir
    `checkpoint` (a local path or a `gs://` URL, fetched into `workdir`), or, when
    `checkpoint` is empty, the model of `config` trained in `workdir` (a finished run
    there is reused: training resumes, so nothing is trained twice). Restored as
    `--mode=sample` restores, with the same checks and fall-back."""
    if checkpoint:
        workdir = fetch_workdir(checkpoint, workdir)
    else:
        train.run(dataclasses.replace(
            config, train=dataclasses.replace(config.train, sample_at_end=False)), workdir)
    model, step, _ = restore_model(config, workdir, build_tokenizer(config.tokenizer))
    return model, step
