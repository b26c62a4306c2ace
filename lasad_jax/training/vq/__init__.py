"""Losses for training the VQ tokenizer: L2 + LPIPS + PatchGAN hinge + codebook terms.

A VQ training step builds the modules once with `build_loss_modules(config, rngs)`, then
per step (all images NHWC in [-1, 1]):

  generator update (grads w.r.t. the VQ model only):
      x_hat, (codebook, commitment) = vq_model(x)
      total, metrics = generator_loss(cfg, step, x, x_hat, codebook_loss=..., commitment_loss=...,
                                      perceptual=lpips(x, x_hat) if lpips else None,
                                      logits_fake=disc(x_hat))          # D params fixed
  discriminator update (grads w.r.t. the discriminator only):
      d_total, d_metrics = discriminator_loss(cfg, step, disc(x), disc(stop_gradient(x_hat)))
"""

from __future__ import annotations

from flax import nnx

from lasad_jax.training.vq.discriminator import BatchStatNorm, PatchGANDiscriminator
from lasad_jax.training.vq.losses import (
    VQLossConfig,
    adversarial_weight,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    hinge_gen_loss,
    non_saturating_gen_loss,
    reconstruction_loss,
    vanilla_d_loss,
)
from lasad_jax.training.vq.perceptual import (
    LPIPS,
    build_perceptual,
    load_lpips,
    perceptual_problems,
)


def build_loss_modules(config: VQLossConfig,
                       rngs: nnx.Rngs) -> tuple[LPIPS | None, PatchGANDiscriminator]:
    """The frozen LPIPS network (None when `perceptual_weight == 0`; a clear error naming
    `config.loss.perceptual_weights` when the file is missing) and a fresh discriminator."""
    lpips = build_perceptual(config.perceptual_weight, config.perceptual_weights)
    disc = PatchGANDiscriminator(ndf=config.disc_channels, n_layers=config.disc_layers,
                                 norm=config.disc_norm, rngs=rngs)
    return lpips, disc


__all__ = [
    "LPIPS", "BatchStatNorm", "PatchGANDiscriminator", "VQLossConfig", "adversarial_weight",
    "build_loss_modules", "build_perceptual", "discriminator_loss", "generator_loss",
    "hinge_d_loss", "hinge_gen_loss", "load_lpips", "non_saturating_gen_loss",
    "perceptual_problems", "reconstruction_loss", "vanilla_d_loss",
]
