"""VQ tokenizer training losses (LlamaGen's `VQLoss`; docs/tokenizer.md), as pure functions.

Generator (VQ model) objective, with LlamaGen's defaults:
    rec_weight * L2(x, x_hat)              1.0 (`--reconstruction-loss l2`; l1 optional)
  + perceptual_weight * mean LPIPS(x, x_hat)  1.0
  + adv_weight(step) * gen_adv(D(x_hat))   0.5 from step 20000 (`--disc-weight/start`)
  + codebook_weight * ||sg(z) - z_q||^2    1.0
  + commitment_weight * ||z - sg(z_q)||^2  0.25 (`--commit-loss-beta`)
  + entropy_weight * entropy_loss          0.0 (`--entropy-loss-ratio`)
Discriminator objective: adv_weight(step) * hinge_d_loss(D(x), D(sg(x_hat))).

The VQ model must return the *unweighted* codebook and commitment MSEs: the weights are
applied here, once (LlamaGen's quantizer pre-multiplies beta; do not do both).

Not implemented: LlamaGen's adaptive adversarial weight (ratio of the reconstruction and
adversarial gradient norms at the decoder's last layer). `VQLoss` has it behind
`disc_adaptive_weight=False` and `vq_train.py` never turns it on, so the VQ-16 recipe
uses a fixed 0.5; it would also need a second backward pass through the decoder.

Deliberate difference: LlamaGen's `non_saturating_gen_loss`/`_d_loss` pass
`(ones_like(logits), logits)` to `binary_cross_entropy_with_logits`, i.e. swap input and
target, which makes them affine in the logits. Here they are the textbook softplus forms.
The default (hinge for both) is unaffected.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lasad_jax.validation import Problems

RECONSTRUCTION_LOSSES = ("l2", "l1")
DISC_LOSSES = ("hinge", "vanilla")
GEN_LOSSES = ("hinge", "non_saturating")
DISC_NORMS = ("batch", "none")


@dataclasses.dataclass(frozen=True)
class VQLossConfig:
    """Loss hyper-parameters, LlamaGen's `vq_train.py` defaults (the `loss` config block).

    `perceptual_weights` is the `.npz` from `python -m lasad_jax.convert.lpips`; it may
    be empty only when `perceptual_weight == 0`. `disc_channels`/`disc_layers`/
    `disc_norm` size the PatchGAN (`PatchGANDiscriminator(ndf, n_layers, norm)`).
    """

    reconstruction_loss: str = "l2"
    reconstruction_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_weights: str = ""
    codebook_weight: float = 1.0
    commitment_weight: float = 0.25
    entropy_weight: float = 0.0
    disc_weight: float = 0.5
    disc_start: int = 20000
    disc_loss: str = "hinge"
    gen_loss: str = "hinge"
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: str = "batch"

    def __post_init__(self) -> None:
        p = Problems("loss")
        p.one_of("reconstruction_loss", self.reconstruction_loss, RECONSTRUCTION_LOSSES)
        p.one_of("disc_loss", self.disc_loss, DISC_LOSSES)
        p.one_of("gen_loss", self.gen_loss, GEN_LOSSES)
        p.one_of("disc_norm", self.disc_norm, DISC_NORMS)
        for field in ("reconstruction_weight", "perceptual_weight", "codebook_weight",
                      "commitment_weight", "entropy_weight", "disc_weight"):
            p.number(field, getattr(self, field), low=0.0)
        p.int_at_least("disc_start", self.disc_start, 0)
        p.positive_int("disc_channels", self.disc_channels)
        p.positive_int("disc_layers", self.disc_layers)
        p.string("perceptual_weights", self.perceptual_weights)
        p.raise_if_any()


def reconstruction_loss(inputs: jax.Array, reconstructions: jax.Array,
                        kind: str = "l2") -> jax.Array:
    """Mean over all elements of the squared (`l2`, LlamaGen's default) or absolute
    (`l1`) pixel error; scalar float32."""
    diff = inputs.astype(jnp.float32) - reconstructions.astype(jnp.float32)
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    raise ValueError(f"loss.reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, "
                     f"got {kind!r}")


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """`0.5 * (mean relu(1 - real) + mean relu(1 + fake))`: D stops pushing once a patch
    is classified with margin 1, which keeps the PatchGAN from saturating."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                  jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Binary cross-entropy on logits: `0.5 * (mean softplus(-real) + mean softplus(fake))`."""
    return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) +
                  jnp.mean(jax.nn.softplus(logits_fake)))


def hinge_gen_loss(logits_fake: jax.Array) -> jax.Array:
    """`-mean(D(x_hat))`: the generator side of the hinge GAN (LlamaGen's default)."""
    return -jnp.mean(logits_fake)


def non_saturating_gen_loss(logits_fake: jax.Array) -> jax.Array:
    """`mean softplus(-D(x_hat))` = BCE against "real": strong gradients while D wins."""
    return jnp.mean(jax.nn.softplus(-logits_fake))


def adversarial_weight(step: jax.Array | int, start_step: int, weight: float) -> jax.Array:
    """`weight` once `step >= start_step`, else 0 (LlamaGen's `adopt_weight`).

    LlamaGen passes the 1-based step (`train_steps + 1`), so its adversarial terms first
    act on update number `start_step`; pass `state.step + 1` for a 0-based step counter
    to match exactly. Works on traced steps (no Python branching).
    """
    return jnp.where(jnp.asarray(step) >= start_step, jnp.float32(weight), jnp.float32(0.0))


def _gen_adv(kind: str, logits_fake: jax.Array) -> jax.Array:
    if kind == "hinge":
        return hinge_gen_loss(logits_fake)
    if kind == "non_saturating":
        return non_saturating_gen_loss(logits_fake)
    raise ValueError(f"config.loss.gen_loss must be one of {GEN_LOSSES}, got {kind!r}")


def generator_loss(config: VQLossConfig, step: jax.Array | int, inputs: jax.Array,
                   reconstructions: jax.Array, *, codebook_loss: jax.Array,
                   commitment_loss: jax.Array, perceptual: jax.Array | None = None,
                   logits_fake: jax.Array | None = None,
                   entropy_loss: jax.Array | float = 0.0,
                   codebook_usage: jax.Array | float = 0.0,
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total VQ-model loss and its terms.

    inputs, reconstructions: `[N, H, W, 3]` in [-1, 1]. codebook_loss, commitment_loss,
    entropy_loss: unweighted scalars from the quantizer. perceptual: LPIPS distances
    `[N]` (or a scalar) of (inputs, reconstructions), required when
    `config.perceptual_weight > 0`. logits_fake: D(reconstructions) with D's parameters
    held fixed (gradients flow only into the reconstructions); None counts as 0, which
    lets a step skip the D forward before `disc_start`. codebook_usage is only logged.

    Metrics hold the unweighted terms plus `adv_weight` (the only weight that changes);
    `loss` = sum of config weight x term.
    """
    rec = reconstruction_loss(inputs, reconstructions, config.reconstruction_loss)
    if config.perceptual_weight > 0:
        if perceptual is None:
            raise ValueError("config.loss.perceptual_weight > 0 but no LPIPS distances were "
                             "passed to generator_loss(perceptual=...)")
        p_loss = jnp.mean(perceptual.astype(jnp.float32))
    else:
        p_loss = jnp.float32(0.0)
    adv_w = adversarial_weight(step, config.disc_start, config.disc_weight)
    gen_adv = (jnp.float32(0.0) if logits_fake is None
               else _gen_adv(config.gen_loss, logits_fake.astype(jnp.float32)))
    terms = {
        "rec_loss": rec,
        "perceptual_loss": p_loss,
        "gen_adv_loss": gen_adv,
        "codebook_loss": jnp.asarray(codebook_loss, jnp.float32),
        "commitment_loss": jnp.asarray(commitment_loss, jnp.float32),
        "entropy_loss": jnp.asarray(entropy_loss, jnp.float32),
    }
    total = (config.reconstruction_weight * rec
             + config.perceptual_weight * p_loss
             + adv_w * gen_adv
             + config.codebook_weight * terms["codebook_loss"]
             + config.commitment_weight * terms["commitment_loss"]
             + config.entropy_weight * terms["entropy_loss"])
    metrics = {"loss": total, **terms, "adv_weight": adv_w,
               "codebook_usage": jnp.asarray(codebook_usage, jnp.float32)}
    return total, metrics


def discriminator_loss(config: VQLossConfig, step: jax.Array | int, logits_real: jax.Array,
                       logits_fake: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`adv_weight(step) * d_loss(D(x), D(sg(x_hat)))`, as LlamaGen (0 before
    `disc_start`, so D does not train until then), and its metrics.

    The logits should come from two separate D calls (real, fake): the discriminator's
    batch-statistics norm then sees each batch alone, as in LlamaGen.
    """
    real = logits_real.astype(jnp.float32)
    fake = logits_fake.astype(jnp.float32)
    if config.disc_loss == "hinge":
        d = hinge_d_loss(real, fake)
    elif config.disc_loss == "vanilla":
        d = vanilla_d_loss(real, fake)
    else:
        raise ValueError(f"config.loss.disc_loss must be one of {DISC_LOSSES}, "
                         f"got {config.disc_loss!r}")
    adv_w = adversarial_weight(step, config.disc_start, config.disc_weight)
    total = adv_w * d
    return total, {"disc_loss": total, "disc_adv_loss": d, "adv_weight": adv_w,
                   "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)}
