"""The quadratic masked form: the spec of docs/operator.md ("What it computes") as code.

It materialises the `[heads, T, T]` weight mask, so it costs `O(T^2)` time and memory. It
is the oracle the chunked, decoding and Pallas forms are tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lasad_jax.ops.decay import decay_mask


def masked_attention(
    variant: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    num_prefix: int,
    log_row: jax.Array,
    log_col: jax.Array,
) -> jax.Array:
    """`o_i = sum_j M[i, j] (q_i . k_j) v_j` on float32 operands; returns float32
    `[B, T, H, Dv]`. The products run at JAX's default matmul precision (full float32 on
    CPU only; ops/api.py, "Precision")."""
    mask = decay_mask(variant, q.shape[1], num_prefix, width, log_row, log_col)
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    scores = jnp.einsum("bihd,bjhd->bhij", q, k) * mask[None]
    return jnp.einsum("bhij,bjhe->bihe", scores, v)
