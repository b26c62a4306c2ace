"""The VQ tokenizer's train state, its jitted step and its validation pass.

One jitted step updates the VQ model on L2 + LPIPS + codebook + commitment (+ the
codebook entropy term when `loss.entropy_weight` > 0, + the PatchGAN generator term from
`loss.disc_start`), then the discriminator on the hinge
loss, both with optax and donated state. The host loop, checkpoints and metrics are the
generator's (`lasad_jax.training.host_loop`); the job is `lasad_jax.jobs.train_tokenizer`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lasad_jax.data.image_batches import image_eval_batches
from lasad_jax.parallel import replicated
from lasad_jax.parallel.batch import global_from_full
from lasad_jax.tokenizers.vq import VQConfig, VQModel
from lasad_jax.training.config import OptimizerConfig, TokenizerTrainConfig
from lasad_jax.training.optimizer import make_optimizer, make_schedule
from lasad_jax.training.step import all_finite
from lasad_jax.training.vq import build_loss_modules
from lasad_jax.training.vq.losses import VQLossConfig, discriminator_loss, generator_loss


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


def tokenizer_identity(vq: VQConfig, loss: VQLossConfig) -> dict[str, Any]:
    """What a tokenizer checkpoint records about the run that wrote it: the VQ model's
    architecture and the discriminator's (both are in the state)."""
    return {"task": "tokenizer", "vq": vq.to_dict(),
            "discriminator": {"disc_channels": loss.disc_channels, "disc_layers": loss.disc_layers,
                              "disc_norm": loss.disc_norm}}


def make_vq_state(vq: VQConfig, loss: VQLossConfig, optimizer: OptimizerConfig, *,
                  batch_size: int, seed: int, total_steps: int):
    """(graphdefs, state, optimizer, schedule, lpips) for a tokenizer run. The state is
    built on the host (the LPIPS network is loaded eagerly); the job puts it on the mesh."""
    rngs = nnx.Rngs(seed)
    model = VQModel(vq, rngs=rngs)
    lpips, disc = build_loss_modules(loss, rngs)
    schedule = make_schedule(optimizer, batch_size=batch_size, total_steps=total_steps)
    tx = make_optimizer(optimizer, schedule)
    vq_def, params = nnx.split(model, nnx.Param)
    disc_def, disc_params = nnx.split(disc, nnx.Param)
    state = VQTrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=tx.init(params), disc_params=disc_params,
                         disc_opt_state=tx.init(disc_params))
    return (vq_def, disc_def), state, tx, schedule, lpips


def make_vq_train_step(defs, tx, schedule, loss_cfg: VQLossConfig, lpips,
                       state_shardings: Any | None = None):
    """Returns the jitted `step(state, {"image": uint8 images}) -> (state, metrics)`. With
    `state_shardings` (the tokenizer's weights are replicated: it is small) the step is
    data-parallel over the batch's mesh axes and keeps the state's layout. `metrics`
    carries `state_finite`, which the host loop checks before it saves."""
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
            recon, aux = nnx.merge(vq_def, params)(x, entropy=loss_cfg.entropy_weight > 0)
            perceptual = perceptual_net(x, recon) if perceptual_net is not None else None
            total, metrics = generator_loss(
                loss_cfg, count, x, recon, codebook_loss=aux["codebook_loss"],
                commitment_loss=aux["commitment_loss"], perceptual=perceptual,
                logits_fake=disc_fixed(recon), codebook_usage=aux["codebook_usage"],
                entropy_loss=aux.get("entropy_loss", 0.0))
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
        # Before `disc_start` D's loss weight is 0, so its gradients are zero, yet AdamW's
        # weight decay would shrink it (about 10% over LlamaGen's 20k steps): D and its
        # Adam moments and count are held as they are until D starts to learn. The
        # schedule's count runs on, so that D learns at the logged rate of each step (held,
        # it would warm up again from 0 at `disc_start` and trail a decay to the end).
        started = count >= loss_cfg.disc_start

        def hold(new: Any, old: Any) -> Any:
            if isinstance(new, optax.ScaleByScheduleState):
                return new
            return jax.tree.map(lambda a, b: jnp.where(started, a, b), new, old)

        disc_params = hold(disc_params, state.disc_params)
        d_opt = jax.tree.map(hold, d_opt, state.disc_opt_state,
                             is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        mse = jnp.mean(jnp.square(recon - x))
        metrics = dict(metrics, **d_metrics, grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(params), learning_rate=schedule(state.step),
                       psnr=10.0 * jnp.log10(4.0 / mse),  # peak-to-peak range is 2
                       state_finite=all_finite((params, opt_state, disc_params, d_opt)))
        new = VQTrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           disc_params=disc_params, disc_opt_state=d_opt)
        return new, metrics

    out = None if mesh is None else (state_shardings, replicated(mesh))
    jitted = jax.jit(step, donate_argnums=0, out_shardings=out)
    return lambda state, batch: jitted(state, batch["image"], lpips_state)


def evaluate_vq(vq_def, params, source, cfg: TokenizerTrainConfig,
                mesh: Mesh) -> tuple[dict[str, float], np.ndarray]:
    """PSNR (dB, over [-1, 1] pixels), L2 and the share of the codebook used over the
    `cfg.eval_images` validation images (a uniform subset, the same each time); also
    returns the first batch's pairs.
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
