"""Kernel bodies of the intra-chunk output kernel: flash-style tiles of the masked form.

The bodies are backend-neutral: they use only ref slicing with `pl.ds`, `pl.program_id`,
`lax.fori_loop`, 2-D `broadcasted_iota` and 2-D `dot_general`, which both the TPU (Mosaic)
and the GPU (Triton) lowerings accept, so `masked.py` wires the same bodies to either.

The decay weights of docs/operator.md ("The mask") are rebuilt per tile from token indices:
a `T x T` or `C x C` array never exists in memory. Slots `0..P-1` are prefix memory (the
class slot): a prefix key weighs 1 for every query at or after it, and its block is
visited by every query block, so the kernels take the model's sequence as it is and no
slicing or concatenation around them is needed. With `rows_per_chunk`, an image key
counts for an image query only inside the query's chunk of `R` whole grid rows (the
intra-chunk term of the chunkwise-parallel form); without it the image is one chunk (the
plain masked form). Rows and columns are derived in float32 (`floor(p / width)`), which
avoids vector integer division (poorly supported by Mosaic) and is exact while
`p < 2**22` (checked by the caller).

Products: operands stay in the input dtype (bfloat16 in training: tensor-core products),
accumulated in float32; the decay-weighted scores are rounded to the input dtype before
their product with v (as flash attention rounds P). Layout inside every kernel: one
(batch, head) per program pair, the token blocks on the last grid axis; each program sees
`[Tp, D]` sequences with `Tp` a multiple of both block sizes (`masked.py` maps them onto
the caller's array, which needs no transpose on GPU); log decays arrive as `(1, 1)` blocks
so that they broadcast against tiles without any scalar extraction.
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


def decay_weights(i, j, lr, lc, *, width: int, num_prefix: int,
                  rows_per_chunk: int | None, prefix_keys: bool = True) -> Weights:
    """Weights for query slots `i` against key slots `j` (broadcastable int32 arrays).

    A prefix key (`j < num_prefix`) weighs 1 for every query at or after it (0 with
    `prefix_keys=False`, for a caller that handles those pairs itself). An image pair
    counts when `j <= i` and, with `rows_per_chunk`, both lie in the same chunk; it weighs
    `exp(dr log a + |dc| log b)`. Exponents of pairs that are not image pairs are zeroed
    before `exp`, so no inf can meet a zero in the backward pass, and their distances
    are 0, so they add nothing to the decay gradients.
    """
    ri, ci = _row_col(i - num_prefix, width)
    rj, cj = _row_col(j - num_prefix, width)
    causal = j <= i
    image = causal & (j >= num_prefix) if num_prefix else causal
    if rows_per_chunk is not None:
        r = float(rows_per_chunk)
        image = image & (jnp.floor(ri / r) == jnp.floor(rj / r))
    dr = jnp.where(image, ri - rj, 0.0)
    dc = jnp.where(image, jnp.abs(ci - cj), 0.0)
    m = jnp.where(image, jnp.exp(dr * lr + dc * lc), 0.0)
    if num_prefix and prefix_keys:
        m = jnp.where(causal & (j < num_prefix), 1.0, m)
    return Weights(m, dr, dc)


def chunk_start(slot, width: int, num_prefix: int, rows_per_chunk: int | None):
    """First slot of the image chunk holding `slot` (a scalar; a prefix slot counts as
    the first image slot); `num_prefix` without chunks."""
    if rows_per_chunk is None:
        return num_prefix
    size = rows_per_chunk * width
    return num_prefix + lax.div(jnp.maximum(slot - num_prefix, 0), size) * size


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


def added(ref, start, span: tuple[int, int] | None) -> jax.Array:
    """A block of an addend (`masked.Addend`) in float32: the block starting at slot
    `start`, or zeros when that block lies outside the slots `span` the addend holds
    (whose memory the caller may have left unwritten). `span=None`: it holds them all."""
    x = ref[...].astype(F32)
    if span is None:
        return x
    return jnp.where((start >= span[0]) & (start < span[1]), x, 0.0)


def forward_kernel(lr_ref, lc_ref, q_ref, k_ref, v_ref, *refs, block_k: int, width: int,
                   num_prefix: int, rows_per_chunk: int | None, prec: lax.Precision,
                   add: bool = False, span: tuple[int, int] | None = None) -> None:
    """One query block: `o = sum_kb ((q k^T) * M) v` over the prefix key blocks and the
    key blocks from the query block's chunk start up to the diagonal; with `add`, plus
    the block of an addend (the first of `refs`) before the one rounding to `o`'s dtype."""
    add_ref, o_ref = refs if add else (None, *refs)
    bq = q_ref.shape[0]
    q0 = pl.program_id(2) * bq
    q = q_ref[...]
    lr, lc = lr_ref[...], lc_ref[...]
    i = q0 + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    statics = dict(width=width, num_prefix=num_prefix, rows_per_chunk=rows_per_chunk)

    def body(kb, acc):
        k0 = kb * block_k
        j = k0 + lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        w = decay_weights(i, j, lr, lc, **statics)
        s = _dot_nt(q, _slice(k_ref, k0, block_k), prec) * w.m
        v = _slice(v_ref, k0, block_k)
        return acc + _dot(s.astype(v.dtype), v, prec)

    first = lax.div(chunk_start(q0, width, num_prefix, rows_per_chunk), block_k)
    n_k = lax.div(q0 + bq - 1, block_k) + 1  # causal skip: no key block past the diagonal
    acc = jnp.zeros((bq, v_ref.shape[-1]), F32)
    if num_prefix:  # the prefix key blocks before the chunk's first
        acc = lax.fori_loop(0, jnp.minimum(first, -(-num_prefix // block_k)), body, acc)
    acc = lax.fori_loop(first, n_k, body, acc)
    if add:
        acc = acc + added(add_ref, q0, span)
    o_ref[...] = acc.astype(o_ref.dtype)


def dkv_kernel(lr_ref, lc_ref, q_ref, k_ref, v_ref, do_ref, *refs, block_q: int, width: int,
               num_prefix: int, rows_per_chunk: int | None, prec: lax.Precision,
               add: bool = False, span: tuple[int, int] | None = None) -> None:
    """One key block: dk, dv, and this block's share of the per-head log-decay gradients,
    over the query blocks from the diagonal to the end of the key block's chunk. With
    chunks, prefix keys get no share here: every later query reads them, so one program
    would walk the whole sequence while the others walk a chunk; `masked.py` adds their
    gradients with two small products instead. Without chunks every block walks to the end
    anyway and prefix keys are done here.

    Tiles are built transposed (keys along rows) so every product is a plain `a @ b` or
    `a @ b.T`: no transposed-LHS matmul is needed from the lowering. With `S = q k^T` and
    `dP = do v^T`, `d log a = sum_{pairs} dr * M * S * dP` (and `|dc|` for `log b`),
    since `dM / d log a = dr * M` there. With `add`, `refs` begins with two addends, added
    to `dk` and `dv` before their rounding.
    """
    dk_add, dv_add = refs[:2] if add else (None, None)
    dk_ref, dv_ref, dlr_ref, dlc_ref = refs[2:] if add else refs
    bk = k_ref.shape[0]
    k0 = pl.program_id(2) * bk
    k, v = k_ref[...], v_ref[...]
    lr, lc = lr_ref[...], lc_ref[...]
    j = k0 + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)
    statics = dict(width=width, num_prefix=num_prefix, rows_per_chunk=rows_per_chunk,
                   prefix_keys=rows_per_chunk is None)

    def body(qb, carry):
        dk, dv, dlr, dlc = carry
        q0 = qb * block_q
        i = q0 + lax.broadcasted_iota(jnp.int32, (1, block_q), 1)
        w = decay_weights(i, j, lr, lc, **statics)
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
        end = chunk_start(k0 + bk - 1, width, num_prefix, rows_per_chunk) + rows_per_chunk * width
        n_q = jnp.minimum(n_q, lax.div(end + block_q - 1, block_q))
    zero11 = jnp.zeros((1, 1), F32)
    init = (jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32), zero11, zero11)
    dk, dv, dlr, dlc = lax.fori_loop(first, n_q, body, init)
    if add:
        dk, dv = dk + added(dk_add, k0, span), dv + added(dv_add, k0, span)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    dlr_ref[...] = dlr
    dlc_ref[...] = dlc
