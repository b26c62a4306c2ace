"""LlamaGen's PatchGAN discriminator (pix2pix `NLayerDiscriminator`) in Flax NNX, NHWC.

Layout, as in LlamaGen (`disc_dim=64`, `disc_num_layers=3`): a 4x4 stride-2 conv
(bias) + LeakyReLU(0.2); `n_layers - 1` blocks of 4x4 stride-2 conv (no bias) + norm +
LeakyReLU with widths `ndf * min(2**n, 8)`; one 4x4 stride-1 conv (no bias) + norm +
LeakyReLU at `ndf * min(2**n_layers, 8)`; a 4x4 stride-1 conv (bias) to one channel.
All convs pad 1. A 256x256 image gives a 30x30 logit map, a 32x32 one a 2x2 map.
Conv kernels start at N(0, 0.02), norm scales at N(1, 0.02), norm shifts at 0, and conv
biases as torch's default (uniform in +-1/sqrt(fan_in)).

Normalisation. The original uses `nn.BatchNorm2d`, and LlamaGen keeps the discriminator
in train mode for both its own step and the generator step, so every call normalises
with the statistics of the batch it is given; the running averages are updated but never
read by a loss. `BatchStatNorm` computes exactly that (batch mean and biased variance
over N, H, W, eps 1e-5, affine) and keeps no running averages, so the discriminator is
stateless and its forward is a pure function of (params, images). Two consequences the
training step must respect to match LlamaGen: call the discriminator on real and on fake
images in *separate* calls (a concatenated batch would share statistics); and under data
parallelism the statistics here are over the global batch inside `jit`, whereas
LlamaGen's DDP (no SyncBatchNorm) uses each GPU's local batch. `norm="none"` drops the
norm layers (then those convs get biases, as pix2pix does without BatchNorm).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("batch", "none")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchStatNorm(nnx.Module):
    """BatchNorm in training mode without running statistics (see module doc for why)."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, eps: float = 1e-5):
        self.scale = nnx.Param(1.0 + 0.02 * jax.random.normal(rngs.params(), (channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class PatchGANDiscriminator(nnx.Module):
    """Maps images `[N, H, W, in_channels]` (in [-1, 1]) to logits `[N, H', W', 1]`.

    `ndf` (LlamaGen `disc_dim`, 64) and `n_layers` (`disc_num_layers`, 3) set the size;
    tests use e.g. `ndf=8`. `dtype` is the compute dtype; logits come back float32.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: str = "batch", *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        if norm not in NORMS:
            raise ValueError(f"config.loss.disc_norm must be one of {NORMS}, got {norm!r}")
        if n_layers < 1 or ndf < 1:
            raise ValueError("config.loss.disc_layers and config.loss.disc_channels must be "
                             f">= 1, got {n_layers} and {ndf}")
        use_norm = norm == "batch"

        def conv(cin: int, cout: int, stride: int, bias: bool) -> nnx.Conv:
            return nnx.Conv(cin, cout, (4, 4), strides=stride, padding=((1, 1), (1, 1)),
                            use_bias=bias, dtype=dtype, rngs=rngs,
                            kernel_init=jax.nn.initializers.normal(0.02),
                            bias_init=_torch_bias_init(cin * 16))

        # (conv, norm or None) per layer; LeakyReLU follows every layer but the last.
        convs = [conv(in_channels, ndf, 2, True)]
        norms: list[BatchStatNorm | None] = [None]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            convs.append(conv(ndf * prev, ndf * mult, 2 if n < n_layers else 1, not use_norm))
            norms.append(BatchStatNorm(ndf * mult, rngs=rngs) if use_norm else None)
        convs.append(conv(ndf * mult, 1, 1, True))
        norms.append(None)
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv(x)
            if norm is not None:
                x = norm(x.astype(jnp.float32)).astype(x.dtype)
            if i < last:
                x = jax.nn.leaky_relu(x, 0.2)
        return x.astype(jnp.float32)
