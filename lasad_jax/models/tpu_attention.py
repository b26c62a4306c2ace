"""Causal softmax attention on TPU: splash attention, the baseline's fused kernel there.

Why: the softmax model is the baseline LASAD is compared with, so its attention should
be the fast one its users would run. On TPU `jax.nn.dot_product_attention` runs XLA's
attention, which writes every head's `T x T` scores and keeps them for the backward
pass: compiled for four TPU slices, LASADGen-L's softmax twin at 512 px did not fit a
v4-8 or a v5e-8 (benchmarks/tpu_aot.py, benchmarks/RESULTS.md "The training step on
four TPU slices"). JAX ships splash attention for TPU
(`jax.experimental.pallas.ops.tpu.splash_attention`, a Mosaic kernel with its own
backward kernels), which never writes the scores and skips the blocks above the diagonal.

Layout and the choices made here (none timed on a TPU yet):
* the mixers' `[B, T, H, D]` in, the same out; splash takes one example's `[H, T, D]`, so
  the kernel is vmapped over the batch between two transposes;
* `T` is padded at the end to a multiple of `BLOCK`, splash's default block of 128
  tokens. Under the causal mask no real query sees a padded key, and the padded queries'
  rows are dropped, so the result is exact. Training never pads at the usual sizes: it
  feeds the class slot and every token but the last, 256 slots at 256 px and 1024 at
  512 px (`training.step`), whole blocks; other grids pay at most 127 slots of work;
* splash applies no scale, so `q` is multiplied by `1 / sqrt(D)` first, in its dtype (exact
  for D = 64, LASADGen's head size: a power of two).

Off a TPU the kernel runs in Pallas' TPU interpreter, which is how tests/models check it
against XLA's attention; `models.mixers.attention_impl` chooses it on TPU only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lasad_jax.ops.platform import target_platform

BLOCK = 128  # tokens per block of every splash kernel (forward, dq, dkv): its default size


def padded_length(num_tokens: int) -> int:
    """The sequence length the kernel runs at: `num_tokens` rounded up to whole blocks."""
    return -(-num_tokens // BLOCK) * BLOCK


def _block_sizes(kernels):
    """`BLOCK` for every kernel, forward and backward: the padding above assumes it."""
    return kernels.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK,
                              block_q_dkv=BLOCK, block_kv_dkv=BLOCK,
                              block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK, block_kv_dq=BLOCK)


def splash_causal(q: jax.Array, k: jax.Array, v: jax.Array, *,
                  interpret: bool | None = None) -> jax.Array:
    """Causal softmax attention of `q, k, v: [B, T, H, D]` with the scale `1 / sqrt(D)`, as
    `jax.nn.dot_product_attention(q, k, v, is_causal=True)`; returns `[B, T, H, D]` in q's
    dtype. `interpret` (default: off a TPU) runs Pallas' TPU interpreter. Differentiable
    (splash's own backward kernels)."""
    # Imported here: Pallas' TPU modules cost import time every other path would pay.
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernels, splash_attention_mask as masks)

    if interpret is None:
        interpret = target_platform() != "tpu"
    _, t, heads, d = q.shape
    tp = padded_length(t)
    mask = masks.MultiHeadMask([masks.CausalMask((tp, tp))] * heads)
    kernel = kernels.make_splash_mha(mask, head_shards=1, q_seq_shards=1,
                                     block_sizes=_block_sizes(kernels),
                                     interpret=interpret)

    def heads_first(x: jax.Array) -> jax.Array:  # [B, T, H, D] -> [B, H, T_padded, D]
        return jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    scaled = q * jnp.asarray(d ** -0.5, q.dtype)
    o = jax.vmap(kernel)(heads_first(scaled), heads_first(k), heads_first(v))
    return o.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)
