"""How each attention variant weights a key by its position relative to a query.

This module is the single statement of the decay rules of DESIGN.md §1. The quadratic
reference builds its whole `T x T` mask here, the chunked form builds its intra-chunk mask
here, and both the chunked form and the decoder smooth their per-column states with
`smooth_columns`. Everything is computed in log space (`exp(n * log a)`), never as a ratio
of powers, so decays of 1.0 and long distances stay finite and differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Variants of the decayed linear attention family (DESIGN.md §1). `softmax` is not here:
# it is ordinary attention and lives with the model.
VARIANTS = ("lasad", "lasad_row", "linear_1d", "linear")

# Widest grid for which `smooth_columns` uses the Toeplitz matmul under method="auto".
TOEPLITZ_MAX_WIDTH = 64


def decay_mask(
    variant: str,
    num_tokens: int,
    num_prefix: int,
    width: int,
    log_row: jax.Array,
    log_col: jax.Array,
) -> jax.Array:
    """Returns the `[heads, T, T]` float32 weights `M[i, j]` of DESIGN.md §1.

    Slots `0..num_prefix-1` are prefix memory (weight 1, causal among themselves); the rest
    are image tokens in raster order on a grid of `width` columns. `log_row` and `log_col`
    are `[heads]` logs of the decays. For `linear_1d` `log_row` is the log of the 1D decay
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
    lr = log_row.astype(jnp.float32)[:, None, None]
    lc = log_col.astype(jnp.float32)[:, None, None]
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


def smooth_columns(
    states: jax.Array, log_col: jax.Array, *, col_axis: int, head_axis: int, method: str = "auto"
) -> jax.Array:
    """Computes `H(c) = sum_c' b^|c - c'| A(c')` along `col_axis` of `states`.

    `states` holds one `Dk x Dv` state per column; `log_col` (`[heads]`) is indexed by
    `head_axis`. Two exact methods:

    * `toeplitz`: one `w x w` matmul; `w` flops per state entry, the fastest for narrow grids.
    * `scan`: two first-order linear recurrences (left-to-right and right-to-left) as
      `jax.lax.associative_scan`; `O(log w)` depth and a constant number of flops per state
      entry, so the cost per token stays flat as grids widen.

    `auto` uses the Toeplitz matmul up to `TOEPLITZ_MAX_WIDTH` columns (measured in
    benchmarks/op_scaling.py) and the scans above it.
    """
    width = states.shape[col_axis]
    if method == "auto":
        method = "toeplitz" if width <= TOEPLITZ_MAX_WIDTH else "scan"
    col_axis %= states.ndim
    head_axis %= states.ndim
    if method == "toeplitz":
        toe = column_toeplitz(width, log_col)  # [H, w, w]
        letters = "abcdefghijklmnop"[: states.ndim]
        src = letters[col_axis]
        dst = "y"
        out = letters.replace(src, dst)
        spec = f"{letters[head_axis]}{dst}{src},{letters}->{out}"
        return jnp.einsum(spec, toe, states.astype(jnp.float32))
    if method != "scan":
        raise ValueError(f"method must be 'auto', 'toeplitz' or 'scan', got {method!r}")

    shape = [1] * states.ndim
    shape[head_axis] = log_col.shape[0]
    b = jnp.exp(log_col.astype(jnp.float32)).reshape(shape)
    full_shape = [1] * states.ndim
    full_shape[head_axis] = log_col.shape[0]
    full_shape[col_axis] = width
    b_full = jnp.broadcast_to(b, full_shape)

    def combine(x, y):
        (dx, vx), (dy, vy) = x, y
        return dx * dy, dy * vx + vy

    a = states.astype(jnp.float32)
    _, left = jax.lax.associative_scan(combine, (b_full, a), axis=col_axis)
    _, right = jax.lax.associative_scan(combine, (b_full, a), axis=col_axis, reverse=True)
    # H(c) = left(c) + b * right(c + 1): adding the strict right part avoids the
    # cancellation of `left + right - A`.
    right_strict = jnp.concatenate(
        [
            jax.lax.slice_in_dim(right, 1, width, axis=col_axis),
            jnp.zeros_like(jax.lax.slice_in_dim(right, 0, 1, axis=col_axis)),
        ],
        axis=col_axis,
    )
    return left + b * right_strict
