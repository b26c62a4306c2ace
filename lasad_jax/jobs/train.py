"""`--mode=train` of a generator config: checkpoints, metrics and, at the end, samples.

The state is created sharded over the mesh of `config.mesh` (or restored from the
newest checkpoint in `workdir/checkpoints`, if it was written by the same model and
tokenizer), each process feeds its own slice of every batch, and the host loop
(`lasad_jax.training.host_loop`) runs the jitted step. Each evaluation also draws a small
grid of samples into TensorBoard; at the end, `sample_at_end` writes the sample files
(`lasad_jax.sampling.sampler.sample_to_files`).
"""

from __future__ import annotations

import dataclasses

import jax
from absl import logging
from flax import nnx

from lasad_jax.config import GeneratorRun
from lasad_jax.data import build_source, train_iterator
from lasad_jax.data.config import EMBEDDED
from lasad_jax.data.extracted import ExtractedSource, require_one_tokenizer
from lasad_jax.data.pipeline import dataset_identity
from lasad_jax.parallel import build_mesh, local_batch_size
from lasad_jax.parallel.rules import describe
from lasad_jax.files import require_writable
from lasad_jax.sampling.sampler import sample_grid, sample_to_files
from lasad_jax.tokenizers import Tokenizer, build_tokenizer
from lasad_jax.tokenizers.geometry import CodeGeometry
from lasad_jax.training.checkpoint import data_order, resume_or_start
from lasad_jax.training.generator import bits_per_token, generator_identity, state_factory
from lasad_jax.training.host_loop import Evaluation, run_length, summary, train_loop
from lasad_jax.training.metrics import flat_hparams
from lasad_jax.training.optimizer import peak_learning_rate
from lasad_jax.training.step import make_eval_step, make_train_step


def run(config: GeneratorRun, workdir: str) -> dict[str, float]:
    """Trains for the configured number of steps; returns the final metrics."""
    require_writable(workdir)  # a read-only or misnamed workdir fails before any work
    # Image datasets are tokenized on the fly; code datasets need only the code geometry.
    tokenizer = (build_tokenizer(config.tokenizer) if config.data.name in EMBEDDED
                 else config.geometry)
    train_source = build_source(config.data, "train", tokenizer)
    val_source = (build_source(config.data, "val", tokenizer)
                  if config.train.eval_every >= 0 else None)
    if isinstance(val_source, ExtractedSource):
        require_one_tokenizer(train_source, val_source, config.data.codes_dir)
    steps = run_length(num_steps=config.num_steps, num_epochs=config.num_epochs,
                       batch_size=config.batch_size, num_examples=len(train_source))
    mesh = build_mesh(config.mesh)
    graphdef, init, tx, schedule = state_factory(
        config.model, config.optimizer, batch_size=config.batch_size, seed=config.seed,
        total_steps=steps)
    train_iter = train_iterator(train_source, batch_size=local_batch_size(
        config.batch_size, mesh), seed=config.seed)
    # The checkpoints record the tokenizer whose codes the model learns: that of image
    # datasets, or the one the extracted codes record.
    fingerprint = (tokenizer.fingerprint if config.data.name in EMBEDDED
                   else getattr(train_source, "tokenizer", None))
    decoder = _Decoder(config, tokenizer, fingerprint)
    if config.train.sample_at_end:  # a wrong tokenizer is refused now, not after training
        decoder.require()
    checkpointer, state, start, shardings = resume_or_start(
        workdir, config.train, init, mesh, train_iter,
        identity=generator_identity(config.model, fingerprint, data_order(
            batch_size=config.batch_size, seed=config.seed, train_examples=len(train_source),
            split_seed=config.data.seed if config.data.name in EMBEDDED else None,
            dataset=dataset_identity(train_source))))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("mesh %s over %d devices in %d processes (%s)", describe(mesh), mesh.size,
                 jax.process_count(), jax.devices()[0].platform)
    accum = config.train.grad_accum_steps
    logging.info("model: %s mixer, %.2fM parameters, grid %s, vocab %d; %d train / %s val "
                 "examples; %d steps of batch %d%s, peak lr %.3g", config.model.mixer,
                 n_params / 1e6, config.model.grid, config.model.vocab_size, len(train_source),
                 len(val_source) if val_source is not None else "no", steps,
                 config.batch_size,
                 f" ({accum} micro-batches of {config.batch_size // accum})" if accum > 1 else "",
                 peak_learning_rate(config.optimizer, config.batch_size))

    train_step = make_train_step(graphdef, tx, schedule, class_dropout=config.train.class_dropout,
                                 null_class=config.data.num_classes,
                                 ema_decay=config.train.ema_decay, state_shardings=shardings,
                                 nonfinite=config.train.nonfinite,
                                 grad_accum_steps=config.train.grad_accum_steps)
    eval_step = make_eval_step(graphdef)

    def model_of(state) -> nnx.Module:
        return nnx.merge(graphdef, state.ema_params if config.sample.use_ema else state.params)

    def evaluate(state, step: int) -> Evaluation:
        values = {name: bits_per_token(eval_step, params, val_source,
                                       config.train.eval_batch_size, mesh)
                  for name, params in (("val_bits_per_token", state.params),
                                       ("val_bits_per_token_ema", state.ema_params))}
        logging.info("step %d: validation %.4f bits/token (EMA %.4f)", step,
                     values["val_bits_per_token"], values["val_bits_per_token_ema"])
        images = {}
        if decoder.get() is not None:  # a grid of samples for TensorBoard
            images["samples"] = sample_grid(model_of(state), decoder.get(), config.sample,
                                            num_classes=config.data.num_classes, mesh=mesh)[None]
        return values, images

    result = train_loop(state, train_step, train_iter, loop=config.train, start=start,
                        total_steps=steps, mesh=mesh, checkpointer=checkpointer, workdir=workdir,
                        evaluate=evaluate if val_source is not None else None,
                        nonfinite=config.train.nonfinite,
                        hparams=flat_hparams(dataclasses.asdict(config)))

    outputs = []
    # Samples belong to the finished run: not to a preempted one, nor to a chunk that
    # `train.stop_after` ends early (the run resumes later and samples at its end).
    if config.train.sample_at_end and not result.preempted and result.step >= steps:
        # Every process takes part in generation (the batch is split over all devices);
        # process 0 writes the files. A finished run started again finds them drawn.
        paths = sample_to_files(model_of(result.state), decoder.require(),
                                config.sample, num_classes=config.data.num_classes,
                                out_dir=workdir, step=result.step, mesh=mesh)
        if paths:
            outputs.append(f"samples {paths['png']}")
    logging.info("%s", summary(result, steps, checkpointer.directory, outputs))
    return result.metrics


class _Decoder:
    """The tokenizer that turns sample codes into images: built when first needed, since
    training on codes needs no tokenizer weights, and checked against the fingerprint the
    codes record (`codes_fingerprint`; None for image datasets, tokenized by this very
    tokenizer, and for codes too old to record one), since another tokenizer would decode
    the codes into noise. TensorBoard's grids are skipped (said once) when it cannot be
    built or does not match; `require` raises instead, for the samples a run ends with."""

    def __init__(self, config: GeneratorRun, tokenizer: Tokenizer | CodeGeometry,
                 codes_fingerprint: str | None):
        self.config = config
        self.codes_fingerprint = codes_fingerprint
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else None
        self.tried = self.tokenizer is not None

    def require(self) -> Tokenizer:
        if self.tokenizer is None:
            self.tokenizer = build_tokenizer(self.config.tokenizer)
            self.tried = True
        check_decodes(self.tokenizer, self.codes_fingerprint, self.config.data.codes_dir)
        return self.tokenizer

    def get(self) -> Tokenizer | None:
        if not self.tried:
            self.tried = True
            try:
                self.require()
            except (ValueError, OSError) as err:
                self.tokenizer = None
                logging.info("no sample images in TensorBoard: %s", str(err).splitlines()[0])
        return self.tokenizer


def check_decodes(tokenizer: Tokenizer, codes_fingerprint: str | None, codes_dir: str) -> None:
    """Raises unless `tokenizer` is the one that extracted the codes (when they say)."""
    if codes_fingerprint is not None and tokenizer.fingerprint != codes_fingerprint:
        raise ValueError(
            f"config.tokenizer ({tokenizer.describe()}) is not the tokenizer that extracted "
            f"config.data.codes_dir={codes_dir!r}: {codes_fingerprint} there, "
            f"{tokenizer.fingerprint} here, so it would decode the samples into noise; set "
            "config.tokenizer to the extracting one, or config.train.sample_at_end=False")
