"""How each attention variant weights a key by its position relative to a query.

This module is the single statement of the decay rules of docs/operator.md ("What it
computes"). The quadratic reference builds its whole `T x T` mask here, and the chunked
form its intra-chunk mask and the smoothing of its per-chunk column sums across the grid
columns (`smooth_columns`). Everything is computed in
log space (`exp(n * log a)`), never as a ratio of powers, so decays of 1.0 and long
distances stay finite and differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Variants of the decayed linear attention family (docs/operator.md, "Variants").
# `softmax` is not here: it is ordinary attention and lives with the model.
VARIANTS = ("lasad", "lasad_row", "linear_1d", "linear")

# The log that stands for a decay of exactly 0 (`validation.check_decay` gives it;
# `decay_mask` clamps lower logs, -inf included, to it). With `log 0 = -inf` the
# distance-0 weight `0^0 = exp(0 * log 0)` is NaN in every form; this finite stand-in keeps
# it 1 and still underflows to 0 at any distance >= 1 (exp(-128) is below float32's
# smallest subnormal, exp(-103.3)). A power of two, so that integer multiples of it and
# their sums and differences, as the forms build exponents, stay exact (a distance that
# cancels gives exactly 0), in bfloat16 too. No nonzero float32 decay has a log this low.
LOG_ZERO = -128.0


def decay_mask(
    variant: str,
    num_tokens: int,
    num_prefix: int,
    width: int,
    log_row: jax.Array,
    log_col: jax.Array,
) -> jax.Array:
    """Returns the `[heads, T, T]` float32 weights `M[i, j]` of docs/operator.md.

    Slots `0..num_prefix-1` are prefix memory (weight 1, causal among themselves); the rest
    are image tokens in raster order on a grid of `width` columns. `log_row` and `log_col`
    are `[heads]` logs of the decays (below `LOG_ZERO`, -inf included, taken as
    `LOG_ZERO`: a decay of 0). For `linear_1d` `log_row` is the log of the 1D decay
    and `log_col` is ignored; for `linear` both are ignored.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    idx = jnp.arange(num_tokens)
    i, j = idx[:, None], idx[None, :]
    causal = j <= i
    prefix_key = j < num_prefix
    image_pair = causal & (j >= num_prefix)  # i >= j >= num_prefix, so both are image tokens

    p_i, p_j = i - num_prefix, j - num_prefix
    dr = (p_i // width - p_j // width).astype(jnp.float32)
    dc = (p_i % width - p_j % width).astype(jnp.float32)
    lr = jnp.maximum(log_row.astype(jnp.float32), LOG_ZERO)[:, None, None]
    lc = jnp.maximum(log_col.astype(jnp.float32), LOG_ZERO)[:, None, None]
    if variant == "lasad":
        expo = dr * lr + jnp.abs(dc) * lc
    elif variant == "lasad_row":
        # Across rows only the row distance counts; inside a row, the 1D column distance.
        expo = jnp.where(dr == 0, dc * lc, dr * lr)
    elif variant == "linear_1d":
        expo = (i - j).astype(jnp.float32) * lr
    else:  # linear
        expo = jnp.zeros((1, num_tokens, num_tokens), jnp.float32)
    # Clamp the exponent where the pair is masked: exp of a positive exponent could be inf
    # and inf * 0 would poison the gradients.
    expo = jnp.where(image_pair, expo, 0.0)
    image_w = jnp.where(image_pair, jnp.exp(expo), 0.0)
    return jnp.where(prefix_key & causal, 1.0, image_w)


def column_toeplitz(width: int, log_col: jax.Array) -> jax.Array:
    """`[heads, width, width]` matrix `b^|c - c'|`: the cross-column decay of LASAD."""
    c = jnp.arange(width, dtype=jnp.float32)
    dist = jnp.abs(c[:, None] - c[None, :])
    return jnp.exp(dist[None] * log_col.astype(jnp.float32)[:, None, None])


def smooth_columns(states: jax.Array, log_col: jax.Array) -> jax.Array:
    """`H(c) = sum_c' b^|c - c'| A(c')` for `states: [..., heads, width, Dk, Dv]` (the
    chunked form's `[chunks, batch, heads, width, Dk, Dv]` column sums, all chunks at once).

    One `w x w` Toeplitz matmul per head (`w` multiply-adds per state entry). Two
    first-order scans across the columns would need only a few per entry, but on the 2-core
    CPU the matmul is the faster up to the widest grid we target (w = 128; see
    benchmarks/chunk_design.py, "smoothing", and benchmarks/RESULTS.md).
    The Toeplitz matrix is broadcast to every batch dim of `states` so that the contraction
    is a plain batched matmul and XLA never transposes the (large) states.
    """
    *_, width, dk, dv = states.shape
    flat = states.astype(jnp.float32).reshape(*states.shape[:-2], dk * dv)
    toe = column_toeplitz(width, log_col)
    toe = jnp.broadcast_to(toe, flat.shape[:-2] + toe.shape[-2:])
    return jnp.einsum("...ij,...jf->...if", toe, flat).reshape(states.shape)
