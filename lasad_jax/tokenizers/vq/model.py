"""LlamaGen's VQ-16 image tokenizer as a Flax NNX model (NHWC, images in [-1, 1]).

`VQConfig()` is the published VQ-16 (about 72M parameters, 256 px -> 16x16 codes from a
16384 x 8 codebook); smaller configs share the code path so CPU tests stay cheap.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lasad_jax.tokenizers.vq.blocks import Decoder, Encoder, conv
from lasad_jax.tokenizers.vq.config import VQConfig
from lasad_jax.tokenizers.vq.quantizer import VectorQuantizer


class VQModel(nnx.Module):
    """Encoder -> 1x1 `quant_conv` -> quantizer; codes -> 1x1 `post_quant_conv` -> decoder.

    Attribute names follow LlamaGen's module names so every parameter path has one
    checkpoint key (see `lasad_jax.convert.llamagen_vq`, `lasad_jax.tokenizers.vq.weights`).
    """

    def __init__(self, config: VQConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs)
        self.decoder = Decoder(config, rngs)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_dim,
                                        config.commit_beta, rngs)
        self.quant_conv = conv(config.z_channels, config.codebook_dim, 1, rngs)
        self.post_quant_conv = conv(config.codebook_dim, config.z_channels, 1, rngs)

    def _check_images(self, images: jax.Array) -> None:
        f, c = self.config.downsample_factor, self.config.in_channels
        if images.ndim != 4 or images.shape[-1] != c or images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"images must be float [N, H, W, {c}] with H and W multiples of "
                             f"{f} (the downsampling factor), got shape {images.shape}")

    def encode(self, images: jax.Array, entropy: bool = False,
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Float images `[N, H, W, C]` in [-1, 1] -> `(quant [N, h, w, codebook_dim],
        codes int32 [N, h, w], aux losses and usage)`; `entropy`: the quantizer's."""
        self._check_images(images)
        h = self.quant_conv(self.encoder(images))
        return self.quantize(h, entropy=entropy)

    def decode(self, quant: jax.Array) -> jax.Array:
        """Quantized latents `[N, h, w, codebook_dim]` -> images `[N, H, W, C]` (about [-1, 1],
        not clipped)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """Integer codes `[N, h, w]` -> images `[N, H, W, C]`."""
        if codes.ndim != 3:
            raise ValueError(f"codes must have shape [N, h, w], got {codes.shape}")
        return self.decode(self.quantize.lookup(codes))

    def __call__(self, images: jax.Array, entropy: bool = False,
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Training pass: `(reconstruction, losses)`, where `losses` holds the mean squared
        reconstruction error `reconstruction_loss`, `codebook_loss`, `commitment_loss` and
        `codebook_usage`, and with `entropy` the quantizer's `entropy_loss` (perceptual
        and GAN terms belong to the training loop)."""
        quant, _, aux = self.encode(images, entropy=entropy)
        recon = self.decode(quant)
        losses = {**aux, "reconstruction_loss": jnp.mean((recon - images) ** 2)}
        return recon, losses


def param_count(model: nnx.Module) -> int:
    """Number of parameter scalars (works on an abstract `nnx.eval_shape` model too)."""
    leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    return sum(math.prod(x.shape) for x in leaves)


def abstract_model(config: VQConfig) -> VQModel:
    """The model's structure and shapes without allocating or initialising any weights."""
    return nnx.eval_shape(lambda: VQModel(config, rngs=nnx.Rngs(0)))
