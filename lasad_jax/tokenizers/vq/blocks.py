"""Convolutional building blocks of the VQ-16 encoder and decoder, in NHWC.

The layout (module names, list indices, which levels carry attention) mirrors LlamaGen's
PyTorch `vq_model.py` on purpose: the converter then maps every parameter path to a
PyTorch state-dict key by a fixed rule (`conv_blocks.2.res.0.conv1.kernel` <->
`conv_blocks.2.res.0.conv1.weight`) instead of a hand-written table that could drift.
Dropout is omitted because VQ-16 is trained and used with a rate of 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lasad_jax.tokenizers.vq.config import VQConfig

# torch's `padding=1` for a 3x3 kernel, spelled out so no 'SAME' rule is involved.
_PAD1 = ((1, 1), (1, 1))


def conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, *, stride: int = 1,
         padding: tuple[tuple[int, int], tuple[int, int]] | None = None) -> nnx.Conv:
    """A conv with explicit padding (1 for 3x3, 0 for 1x1 unless given), like torch's."""
    if padding is None:
        padding = _PAD1 if kernel == 3 else ((0, 0), (0, 0))
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=padding, rngs=rngs)


def norm(channels: int, cfg: VQConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm with the exact (two-pass) variance, as torch computes it."""
    return nnx.GroupNorm(channels, num_groups=cfg.norm_groups, epsilon=cfg.norm_eps,
                         use_fast_variance=False, rngs=rngs)


class ResnetBlock(nnx.Module):
    """norm-swish-conv twice plus a residual; a 1x1 `nin_shortcut` when channels change."""

    def __init__(self, cin: int, cout: int, cfg: VQConfig, rngs: nnx.Rngs):
        self.norm1 = norm(cin, cfg, rngs)
        self.conv1 = conv(cin, cout, 3, rngs)
        self.norm2 = norm(cout, cfg, rngs)
        self.conv2 = conv(cout, cout, 3, rngs)
        self.nin_shortcut = conv(cin, cout, 1, rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all positions, with 1x1-conv projections.

    Kept as 1x1 convs (not Linear) so the checkpoint's `[C, C, 1, 1]` weights convert by
    the same OIHW -> HWIO rule as every other conv.
    """

    def __init__(self, channels: int, cfg: VQConfig, rngs: nnx.Rngs):
        self.norm = norm(channels, cfg, rngs)
        self.q = conv(channels, channels, 1, rngs)
        self.k = conv(channels, channels, 1, rngs)
        self.v = conv(channels, channels, 1, rngs)
        self.proj_out = conv(channels, channels, 1, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, hh, ww, c = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(n, hh * ww, c) for f in (self.q, self.k, self.v))
        logits = jnp.einsum("bic,bjc->bij", q, k) * (c ** -0.5)
        out = jnp.einsum("bij,bjc->bic", jax.nn.softmax(logits, axis=-1), v)
        return x + self.proj_out(out.reshape(n, hh, ww, c))


class Downsample(nnx.Module):
    """Pad zero on the bottom and right only, then a 3x3 stride-2 valid conv (halves H, W)."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, rngs, stride=2, padding=((0, 1), (0, 1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 (each pixel repeated 2x2), then a 3x3 conv."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution: res blocks, each followed by attention on attention levels.

    The owner attaches the resampler (`downsample` / `upsample`, None on its last level)
    so the attribute name matches the checkpoint's key.
    """

    def __init__(self, cin: int, cout: int, num_res: int, attention: bool,
                 cfg: VQConfig, rngs: nnx.Rngs):
        self.res = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, cfg, rngs)
                             for i in range(num_res)])
        self.attn = nnx.List([AttnBlock(cout, cfg, rngs) for _ in range(num_res)]
                             if attention else [])

    def blocks(self, x: jax.Array) -> jax.Array:
        for i, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


def _mid(channels: int, cfg: VQConfig, rngs: nnx.Rngs) -> nnx.List:
    """The middle stage at the lowest resolution: res, attention, res."""
    return nnx.List([ResnetBlock(channels, channels, cfg, rngs),
                     AttnBlock(channels, cfg, rngs),
                     ResnetBlock(channels, channels, cfg, rngs)])


class Encoder(nnx.Module):
    """Images `[N, H, W, 3]` -> latents `[N, H/f, W/f, z_channels]`, f = 2**(levels-1).

    Attention follows each res block only at the last (lowest-resolution) level, and once
    in the middle stage.
    """

    def __init__(self, cfg: VQConfig, rngs: nnx.Rngs):
        mult = cfg.ch_mult
        self.conv_in = conv(cfg.in_channels, cfg.ch, 3, rngs)
        blocks = []
        cin = cfg.ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            level = Level(cin, cfg.ch * m, cfg.encoder_res_blocks, last, cfg, rngs)
            level.downsample = None if last else Downsample(cfg.ch * m, rngs)
            blocks.append(level)
            cin = cfg.ch * m
        self.conv_blocks = nnx.List(blocks)
        self.mid = _mid(cin, cfg, rngs)
        self.norm_out = norm(cin, cfg, rngs)
        self.conv_out = conv(cin, cfg.z_channels, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if level.downsample is not None:
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    """Latents `[N, h, w, z_channels]` -> images `[N, h*f, w*f, 3]`.

    `conv_blocks[0]` is the lowest resolution (the reverse of `ch_mult`, as in LlamaGen);
    only it carries attention after each of its res blocks, and every level but the last
    ends with an upsample.
    """

    def __init__(self, cfg: VQConfig, rngs: nnx.Rngs):
        mult = cfg.ch_mult
        cin = cfg.ch * mult[-1]
        self.conv_in = conv(cfg.z_channels, cin, 3, rngs)
        self.mid = _mid(cin, cfg, rngs)
        blocks = []
        for j, m in enumerate(reversed(mult)):
            first, last = j == 0, j == len(mult) - 1
            level = Level(cin, cfg.ch * m, cfg.decoder_res_blocks, first, cfg, rngs)
            level.upsample = None if last else Upsample(cfg.ch * m, rngs)
            blocks.append(level)
            cin = cfg.ch * m
        self.conv_blocks = nnx.List(blocks)
        self.norm_out = norm(cin, cfg, rngs)
        self.conv_out = conv(cin, cfg.out_channels, 3, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
