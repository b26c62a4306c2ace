"""Kernel bodies of the intra-chunk output kernel: flash-style tiles of the masked form.

The bodies are backend-neutral: they use only ref slicing with `pl.ds`, `pl.program_id`,
`lax.fori_loop`, 2-D `broadcasted_iota` and 2-D `dot_general`, which both the TPU (Mosaic)
and the GPU (Triton) lowerings accept, so `masked.py` wires the same bodies to either.

The decay weights of docs/operator.md ("The mask") are rebuilt per tile from token indices:
a `T x T` or `C x C` array never exists in memory. Tokens are image tokens only (prefix
slots are handled outside, `ops.chunked.with_prefix`). With `rows_per_chunk`, a key
counts for a query only inside the query's chunk of `R` whole grid rows (the intra-chunk
term of the chunkwise-parallel form); without it the whole sequence is one chunk (the
plain masked form). Rows and columns are derived in float32 (`floor(p / width)`), which
avoids vector integer division (poorly supported by Mosaic) and is exact while
`p < 2**22` (checked by the caller).

Products: operands stay in the input dtype (bfloat16 in training: tensor-core products),
accumulated in float32; the decay-weighted scores are rounded to the input dtype before
their product with v (as flash attention rounds P). Layout inside every kernel: one
(batch * head) per grid row, sequences `[Tp, D]` with `Tp` a multiple of both block
sizes; log decays arrive as `(1, 1)` blocks so that they broadcast against tiles without
any scalar extraction.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

F32 = jnp.float32


class Weights(NamedTuple):
    """A tile of the weights `M[i, j]` and the distances its exponent was built from."""

    m: jax.Array  # the weights
    dr: jax.Array  # r_i - r_j where the pair counts, else 0
    dc: jax.Array  # |c_i - c_j| likewise


def _row_col(idx: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    p = idx.astype(F32)
    row = jnp.floor(p / float(width))
    return row, p - row * float(width)


def decay_weights(i, j, lr, lc, *, width: int, rows_per_chunk: int | None) -> Weights:
    """Weights for query tokens `i` against key tokens `j` (broadcastable int32 arrays).

    A pair counts when `j <= i` and, with `rows_per_chunk`, both lie in the same chunk;
    it weighs `exp(dr log a + |dc| log b)`. Exponents of pairs that do not count are
    zeroed before `exp`, so no inf can meet a zero in the backward pass.
    """
    ri, ci = _row_col(i, width)
    rj, cj = _row_col(j, width)
    counts = j <= i
    if rows_per_chunk is not None:
        r = float(rows_per_chunk)
        counts = counts & (jnp.floor(ri / r) == jnp.floor(rj / r))
    dr = jnp.where(counts, ri - rj, 0.0)
    dc = jnp.where(counts, jnp.abs(ci - cj), 0.0)
    m = jnp.where(counts, jnp.exp(dr * lr + dc * lc), 0.0)
    return Weights(m, dr, dc)


def chunk_start(token, width: int, rows_per_chunk: int | None):
    """First token of the chunk holding `token` (a scalar); 0 without chunks."""
    if rows_per_chunk is None:
        return 0
    size = rows_per_chunk * width
    return lax.div(token, size) * size


def _dot(a: jax.Array, b: jax.Array, prec: lax.Precision) -> jax.Array:
    """`a @ b` in the operands' dtype, accumulated in float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=prec,
                           preferred_element_type=F32)


def _dot_nt(a: jax.Array, b: jax.Array, prec: lax.Precision) -> jax.Array:
    """`a @ b.T` (contracting the feature axes, as flash attention's q k^T)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=prec,
                           preferred_element_type=F32)


def _slice(ref, start, size: int) -> jax.Array:
    return ref[pl.ds(pl.multiple_of(start, size), size), :]


def sum11(x: jax.Array) -> jax.Array:
    """Sum of a 2-D tile kept as a `(1, 1)` array (one axis at a time, which every lowering
    supports)."""
    return jnp.sum(jnp.sum(x, axis=1, keepdims=True), axis=0, keepdims=True)


def forward_kernel(lr_ref, lc_ref, q_ref, k_ref, v_ref, o_ref, *, block_k: int, width: int,
                   rows_per_chunk: int | None, prec: lax.Precision) -> None:
    """One query block: `o = sum_kb ((q k^T) * M) v` over the key blocks from the query
    block's chunk start up to the diagonal."""
    bq = q_ref.shape[0]
    q0 = pl.program_id(1) * bq
    q = q_ref[...]
    lr, lc = lr_ref[...], lc_ref[...]
    i = q0 + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)

    def body(kb, acc):
        k0 = kb * block_k
        j = k0 + lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        w = decay_weights(i, j, lr, lc, width=width, rows_per_chunk=rows_per_chunk)
        s = _dot_nt(q, _slice(k_ref, k0, block_k), prec) * w.m
        v = _slice(v_ref, k0, block_k)
        return acc + _dot(s.astype(v.dtype), v, prec)

    first = lax.div(chunk_start(q0, width, rows_per_chunk), block_k)
    n_k = lax.div(q0 + bq - 1, block_k) + 1  # causal skip: no key block past the diagonal
    acc = lax.fori_loop(first, n_k, body, jnp.zeros((bq, v_ref.shape[-1]), F32))
    o_ref[...] = acc.astype(o_ref.dtype)


def dkv_kernel(lr_ref, lc_ref, q_ref, k_ref, v_ref, do_ref, dk_ref, dv_ref, dlr_ref, dlc_ref,
               *, block_q: int, width: int, rows_per_chunk: int | None,
               prec: lax.Precision) -> None:
    """One key block: dk, dv, and this block's share of the per-head log-decay gradients,
    over the query blocks from the diagonal to the end of the key block's chunk.

    Tiles are built transposed (keys along rows) so every product is a plain `a @ b` or
    `a @ b.T`: no transposed-LHS matmul is needed from the lowering. With `S = q k^T` and
    `dP = do v^T`, `d log a = sum_{pairs} dr * M * S * dP` (and `|dc|` for `log b`),
    since `dM / d log a = dr * M` there.
    """
    bk = k_ref.shape[0]
    k0 = pl.program_id(1) * bk
    k, v = k_ref[...], v_ref[...]
    lr, lc = lr_ref[...], lc_ref[...]
    j = k0 + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)

    def body(qb, carry):
        dk, dv, dlr, dlc = carry
        q0 = qb * block_q
        i = q0 + lax.broadcasted_iota(jnp.int32, (1, block_q), 1)
        w = decay_weights(i, j, lr, lc, width=width, rows_per_chunk=rows_per_chunk)
        q, do = _slice(q_ref, q0, block_q), _slice(do_ref, q0, block_q)
        s_t = _dot_nt(k, q, prec)  # S^T
        dp_t = _dot_nt(v, do, prec)  # dP^T
        g = s_t * dp_t * w.m
        return (dk + _dot((dp_t * w.m).astype(q.dtype), q, prec),
                dv + _dot((s_t * w.m).astype(do.dtype), do, prec),
                dlr + sum11(w.dr * g), dlc + sum11(w.dc * g))

    n_q = q_ref.shape[0] // block_q
    first = lax.div(k0, block_q)  # causal skip: query blocks wholly before this key block
    if rows_per_chunk is not None:  # ... and wholly after its chunk
        end = chunk_start(k0 + bk - 1, width, rows_per_chunk) + rows_per_chunk * width
        n_q = jnp.minimum(n_q, lax.div(end + block_q - 1, block_q))
    zero11 = jnp.zeros((1, 1), F32)
    init = (jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32), zero11, zero11)
    dk, dv, dlr, dlc = lax.fori_loop(first, n_q, body, init)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    dlr_ref[...] = dlr
    dlc_ref[...] = dlc
