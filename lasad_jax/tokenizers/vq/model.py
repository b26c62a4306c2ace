"""LlamaGen's VQ-16 image tokenizer as a Flax NNX model (NHWC, images in [-1, 1]).

`VQConfig()` is the published VQ-16 (about 72M parameters, 256 px -> 16x16 codes from a
16384 x 8 codebook); smaller configs share the code path so CPU tests stay cheap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lasad_jax.tokenizers.vq.blocks import Decoder, Encoder, conv
from lasad_jax.tokenizers.vq.quantizer import VectorQuantizer


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Architecture of the VQ tokenizer; the defaults are LlamaGen's VQ-16."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    encoder_res_blocks: int = 2
    decoder_res_blocks: int = 3
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_dim: int = 8
    commit_beta: float = 0.25
    norm_groups: int = 32
    norm_eps: float = 1e-6
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        positive = ("ch", "encoder_res_blocks", "decoder_res_blocks", "z_channels",
                    "codebook_size", "codebook_dim", "norm_groups", "in_channels",
                    "out_channels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VQConfig.{name} must be a positive int, got {value!r}")
        if not self.ch_mult or not all(isinstance(m, int) and m >= 1 for m in self.ch_mult):
            raise ValueError(f"VQConfig.ch_mult must be a non-empty tuple of positive ints, "
                             f"got {self.ch_mult!r}")
        bad = sorted({self.ch * m for m in self.ch_mult if (self.ch * m) % self.norm_groups})
        if bad:
            raise ValueError(f"VQConfig: every normalised width ch * ch_mult[i] must be "
                             f"divisible by norm_groups={self.norm_groups}; got widths {bad} "
                             f"(ch={self.ch}, ch_mult={self.ch_mult})")
        if not self.norm_eps > 0 or not self.commit_beta >= 0:
            raise ValueError(f"VQConfig.norm_eps must be > 0 and commit_beta >= 0, got "
                             f"{self.norm_eps!r}, {self.commit_beta!r}")

    @property
    def downsample_factor(self) -> int:
        """Image pixels per code along each axis: one halving per level but the last."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        """Builds a config from `to_dict` output, naming any field it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"VQConfig: unknown fields {unknown}; valid fields: {sorted(known)}")
        d = dict(d)
        if "ch_mult" in d:
            d["ch_mult"] = tuple(d["ch_mult"])
        return cls(**d)


class VQModel(nnx.Module):
    """Encoder -> 1x1 `quant_conv` -> quantizer; codes -> 1x1 `post_quant_conv` -> decoder.

    Attribute names follow LlamaGen's module names so every parameter path has one
    checkpoint key (see `lasad_jax.convert.llamagen_vq`).
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

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Float images `[N, H, W, C]` in [-1, 1] -> `(quant [N, h, w, codebook_dim],
        codes int32 [N, h, w], aux losses and usage)`."""
        self._check_images(images)
        h = self.quant_conv(self.encoder(images))
        return self.quantize(h)

    def decode(self, quant: jax.Array) -> jax.Array:
        """Quantized latents `[N, h, w, codebook_dim]` -> images `[N, H, W, C]` (about [-1, 1],
        not clipped)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """Integer codes `[N, h, w]` -> images `[N, H, W, C]`."""
        if codes.ndim != 3:
            raise ValueError(f"codes must have shape [N, h, w], got {codes.shape}")
        return self.decode(self.quantize.lookup(codes))

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Training pass: `(reconstruction, losses)`, where `losses` holds the mean squared
        reconstruction error `reconstruction_loss`, `codebook_loss`, `commitment_loss` and
        `codebook_usage` (perceptual and GAN terms belong to the training loop)."""
        quant, _, aux = self.encode(images)
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
