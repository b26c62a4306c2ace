"""`--mode=train` for `config.task == "tokenizer"`: trains the VQ tokenizer.

One jitted step updates the VQ model on L2 + LPIPS + codebook + commitment (+ the
PatchGAN generator term from `loss.disc_start`), then the discriminator on the hinge
loss, both with optax and donated state. Checkpoints, resume, metrics and progress work
as for the generator (`lasad_jax.training.loop`). At the end the tokenizer is exported
to `workdir/tokenizer/` in the format `VQ16Tokenizer` and `--mode=extract` load, and a
grid of validation images over their reconstructions is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lasad_jax.convert.llamagen_vq import save as save_tokenizer
from lasad_jax.data.image_batches import (
    build_image_dataset,
    image_eval_batches,
    image_train_iterator,
)
from lasad_jax.parallel import build_mesh, global_batch, local_batch_size, replicated
from lasad_jax.parallel.batch import global_from_full
from lasad_jax.sampling.images import make_grid, save_png
from lasad_jax.tokenizers.vq import VQConfig, VQModel
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.loop import total_steps
from lasad_jax.training.metrics import check_finite, create_writer
from lasad_jax.training.optimizer import make_optimizer, make_schedule, peak_learning_rate
from lasad_jax.training.preemption import PreemptionGuard
from lasad_jax.training.vq import (
    VQLossConfig,
    build_loss_modules,
    discriminator_loss,
    generator_loss,
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VQTrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    disc_params: Any
    disc_opt_state: Any


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [-1, 1] (the tokenizer's input range)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def make_vq_state(config: Any, total_steps: int):
    """(graphdefs, state, optimizer, schedule, lpips) for a tokenizer run."""
    vq_cfg = VQConfig.from_dict(dict(config.vq))
    loss_cfg = VQLossConfig.from_config(config.loss)
    rngs = nnx.Rngs(config.seed)
    model = VQModel(vq_cfg, rngs=rngs)
    lpips, disc = build_loss_modules(loss_cfg, rngs)
    schedule = make_schedule(config.optimizer, batch_size=config.batch_size,
                             total_steps=total_steps)
    tx = make_optimizer(config.optimizer, schedule)
    vq_def, params = nnx.split(model, nnx.Param)
    disc_def, disc_params = nnx.split(disc, nnx.Param)
    state = VQTrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=tx.init(params), disc_params=disc_params,
                         disc_opt_state=tx.init(disc_params))
    return (vq_def, disc_def), state, tx, schedule, lpips, vq_cfg, loss_cfg


def make_vq_train_step(defs, tx, schedule, loss_cfg: VQLossConfig, lpips,
                       state_shardings: Any | None = None):
    """Returns the jitted `step(state, images_uint8) -> (state, metrics)`. With
    `state_shardings` (the tokenizer's weights are replicated: it is small) the step is
    data-parallel over the batch's mesh axes and keeps the state's layout."""
    vq_def, disc_def = defs
    lpips_def, lpips_state = nnx.split(lpips) if lpips is not None else (None, None)
    mesh = jax.tree.leaves(state_shardings)[0].mesh if state_shardings is not None else None
    if mesh is not None and lpips_state is not None:
        lpips_state = jax.device_put(lpips_state, replicated(mesh))

    def step(state: VQTrainState, images: jax.Array, lpips_state: Any):
        x = to_unit(images)
        count = state.step + 1  # LlamaGen counts steps from 1 for the GAN start
        disc_fixed = nnx.merge(disc_def, jax.lax.stop_gradient(state.disc_params))
        perceptual_net = nnx.merge(lpips_def, lpips_state) if lpips_def is not None else None

        def gen_loss(params):
            recon, aux = nnx.merge(vq_def, params)(x)
            perceptual = perceptual_net(x, recon) if perceptual_net is not None else None
            total, metrics = generator_loss(
                loss_cfg, count, x, recon, codebook_loss=aux["codebook_loss"],
                commitment_loss=aux["commitment_loss"], perceptual=perceptual,
                logits_fake=disc_fixed(recon), codebook_usage=aux["codebook_usage"])
            return total, (metrics, recon)

        (_, (metrics, recon)), grads = jax.value_and_grad(gen_loss, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def disc_loss(disc_params):
            disc = nnx.merge(disc_def, disc_params)
            return discriminator_loss(loss_cfg, count, disc(x),
                                      disc(jax.lax.stop_gradient(recon)))

        (_, d_metrics), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(state.disc_params)
        d_updates, d_opt = tx.update(d_grads, state.disc_opt_state, state.disc_params)
        disc_params = optax.apply_updates(state.disc_params, d_updates)
        mse = jnp.mean(jnp.square(recon - x))
        metrics = dict(metrics, **d_metrics, grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(params), learning_rate=schedule(state.step),
                       psnr=10.0 * jnp.log10(4.0 / mse))  # peak-to-peak range is 2
        new = VQTrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           disc_params=disc_params, disc_opt_state=d_opt)
        return new, metrics

    out = None if mesh is None else (state_shardings, replicated(mesh))
    jitted = jax.jit(step, donate_argnums=0, out_shardings=out)
    return lambda state, images: jitted(state, images, lpips_state)


def evaluate_vq(vq_def, params, source, cfg: Any,
                mesh: Mesh) -> tuple[dict[str, float], np.ndarray]:
    """PSNR (dB, over [-1, 1] pixels), L2 and the share of the codebook used over the
    first `cfg.eval_images` validation images; also returns the first batch's pairs.
    Each batch is split over the mesh's data axes and gathered back on every host."""
    model = nnx.merge(vq_def, params)

    @jax.jit
    def run(images):
        x = to_unit(images)
        quant, codes, _ = model.encode(x)
        recon = jnp.clip(model.decode(quant), -1.0, 1.0)
        return jnp.mean(jnp.square(recon - x), axis=(1, 2, 3)), codes, recon

    sq, n, used, first = 0.0, 0.0, set(), None
    for batch in image_eval_batches(source, image_size=cfg.image_size,
                                    batch_size=cfg.eval_batch_size, limit=cfg.eval_images):
        images = global_from_full({"image": batch["image"]}, mesh)["image"]
        mse, codes, recon = (np.asarray(x) for x in multihost_utils.process_allgather(
            run(images), tiled=True))
        real = batch["mask"] > 0
        sq += float(np.sum(np.asarray(mse)[real]))
        n += float(real.sum())
        used.update(np.unique(np.asarray(codes)[real]).tolist())
        if first is None:
            pixels = np.floor(np.clip(127.5 * np.asarray(recon) + 128, 0, 255)).astype(np.uint8)
            first = np.concatenate([batch["image"][real][:8], pixels[real][:8]])
    mse = sq / max(n, 1.0)
    return {"val_l2": mse, "val_psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),
            "val_codebook_used": len(used) / model.config.codebook_size}, first


def train_tokenizer(config: Any, workdir: str) -> dict[str, float]:
    """Trains the VQ tokenizer of `config.vq` on `config.data`; returns final metrics."""
    os.makedirs(workdir, exist_ok=True)
    size = config.train.image_size
    train_source = build_image_dataset(config.data, "train", size)
    val_source = build_image_dataset(config.data, "val", size)
    steps = total_steps(config, len(train_source))
    defs, state, tx, schedule, lpips, vq_cfg, loss_cfg = make_vq_state(config, steps)
    if size % vq_cfg.downsample_factor:
        raise ValueError(f"config.train.image_size={size} must be a multiple of the "
                         f"tokenizer's downsampling factor {vq_cfg.downsample_factor}")
    mesh = build_mesh(config.get("mesh"))
    local_size = local_batch_size(config.batch_size, mesh)
    local_batch_size(config.train.eval_batch_size, mesh, "config.train.eval_batch_size")
    train_iter = image_train_iterator(train_source, image_size=size,
                                      batch_size=local_size, seed=config.seed)
    checkpointer, state, start, shardings = ckpt_lib.resume_or_start(
        workdir, config.train, state, mesh, train_iter)
    logging.info("tokenizer: %.2fM parameters, %d px -> %d x %d codes, codebook %d; %d train "
                 "/ %d val images; %d steps of batch %d, peak lr %.3g, GAN from step %d",
                 sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, size,
                 size // vq_cfg.downsample_factor, size // vq_cfg.downsample_factor,
                 vq_cfg.codebook_size, len(train_source), len(val_source), steps,
                 config.batch_size, peak_learning_rate(config.optimizer, config.batch_size),
                 loss_cfg.disc_start)
    train_step = make_vq_train_step(defs, tx, schedule, loss_cfg, lpips, shardings)
    writer = create_writer(workdir, resume_step=start)
    progress = periodic_actions.ReportProgress(num_train_steps=steps,
                                               every_secs=config.train.progress_every_secs)
    final: dict[str, float] = {}
    last_time, last_step = time.perf_counter(), start
    stop = min(config.train.stop_after or steps, steps)
    guard = PreemptionGuard()
    preempted = False
    if start >= stop:
        logging.info("the checkpoint is at step %d, the run ends at %d: nothing to train",
                     start, stop)
    with checkpointer, guard, jax.set_mesh(mesh):
        for step in range(start + 1, stop + 1):
            state, metrics = train_step(state, global_batch(next(train_iter), mesh)["image"])
            progress(step)
            preempted = guard.reached(step)  # read once: a signal may land mid-iteration
            is_last = step == stop or preempted
            every = config.train.eval_every
            eval_now = step == stop or (every > 0 and step % every == 0)
            if eval_now or step % config.train.log_every == 0:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(step, values)
                values["steps_per_sec"] = (step - last_step) / (time.perf_counter() - last_time)
                if eval_now:
                    val, pairs = evaluate_vq(defs[0], state.params, val_source, config.train,
                                             mesh)
                    values.update(val)
                    logging.info("step %d: validation PSNR %.2f dB, codebook used %.1f%%", step,
                                 val["val_psnr"], 100 * val["val_codebook_used"])
                writer.write_scalars(step, values)
                final.update(values)
                last_time, last_step = time.perf_counter(), step
            if is_last or step % config.train.checkpoint_every == 0:
                check_finite(step, {"param_norm": float(metrics["param_norm"])})
                checkpointer.save(step, state, train_iter, force=is_last)
            if preempted:
                logging.warning("preempted: saved step %d in %s; rerun the same command to "
                                "resume", step, checkpointer.directory)
                break
    writer.flush()
    if jax.process_index() == 0 and stop > start and not preempted:
        export = os.path.join(workdir, "tokenizer")
        save_tokenizer(export, state.params, vq_cfg)
        save_png(os.path.join(workdir, "reconstructions.png"),
                 make_grid(pairs, cols=len(pairs) // 2, scale=config.train.grid_scale))
        logging.info("tokenizer exported to %s (use it as config.tokenizer.checkpoint); "
                     "reconstructions.png: top row inputs, bottom row reconstructions", export)
    return final
