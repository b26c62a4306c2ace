"""GPU (Pallas on Triton) runner of the chunked `lasad` kernel: the twin of `chunked._run`.

Same contract as the TPU runner (`[BH, n*C, D]` float32 blocks in, the chunked form of
DESIGN.md §1 out), so `chunked.py`'s `custom_vjp` reuses it for the backward exactly as on
TPU. What differs is how the sequential chunk axis is expressed, because Triton has no
scratch memory that persists across grid steps:

* grid `(batch*heads, Dv blocks)`; each program walks all chunks of its sequence in an
  in-kernel `lax.fori_loop` whose carry is the column state `A` (`[w, Dk, bDv]`, float32;
  `w`, `Dk`, `Dv` are the padded sizes below).
  Splitting Dv is exact (each output column reads only its own value column) and divides
  the state by `Dv / bDv`; the price is `q k^T` recomputed once per Dv block.
* per chunk: the intra-chunk masked product as two `tl.dot`s (mask from iota indices, never
  `T x T`); the smoothing `H = T_b A` as one `[w, w] @ [w, Dk*bDv]` dot; then, one grid row
  at a time, the inter-chunk read `a^r sum_d q[c, d] H[c, d, :]` and the carry
  `A += a^(R-r) k[c] v[c]^T` as broadcast-multiply-reduce over `[w, Dk, bDv]` (per row and
  column a `Dk x bDv` matvec / outer product: too small for a `tl.dot`, `Dk*bDv` flops per
  token, no waste). Each chunk's output is written once: no read-after-write through
  memory, which would need a barrier between the program's threads.

Triton shapes are powers of two and `tl.dot` wants every dimension >= 16, so the caller
(`chunked.lasad_chunked_pallas`) lays the image out on a padded grid: width
`w' = padded(w)`, features `padded(Dk)`, `padded(Dv)`, `R` (a power of two) rows per chunk,
zero tokens at the end of every grid row and after the last one. This is exact: real tokens
keep their rows and columns, so every distance and decay between them is unchanged; zero
keys and values add nothing to any output or state; padded queries are sliced away (and
their cotangents are zero in the backward).

Status: tested in the Pallas interpreter on CPU, lowered to Triton IR for CUDA, and
compiled and run on an H200 (2026-12-04: float32 values and gradients within 1e-4 of the
reference, tests/ops/test_pallas_api.py); not yet timed on a GPU. Known risk, unmeasured: the carried state is `w' * Dk * bDv` floats per
program (64k at `w' = 64`, `Dk = 64`, `bDv = 16`) and `H` as many again, beyond a register
file, so Triton will spill them to local (L1/L2-cached) memory. Exact either way;
if it is slow, the next steps are blocking Dk as well (the op is linear in a Dk split, the
partial outputs summed outside) or Mosaic GPU with the state in shared memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

F32 = jnp.float32
MIN_DIM = 16  # the smallest `tl.dot` dimension
CHUNK_TOKENS = 64  # target tokens per chunk (rows * w'): modest, as flash kernels' tiles
BLOCK_DV = 16  # value columns per program: the state is [w', Dk', BLOCK_DV]


def padded(n: int) -> int:
    """A width or feature size on Triton's grid: a power of two, at least `MIN_DIM`."""
    return max(MIN_DIM, pl.next_power_of_2(n))


def rows_per_chunk(width: int, rows: int | None = None) -> int:
    """Grid rows per chunk on the padded grid: a power of two (so `C = R w'` is one),
    at most `rows` (when given) and at most `CHUNK_TOKENS / w'`, at least 1."""
    limit = max(1, CHUNK_TOKENS // padded(width))
    if rows is not None:
        limit = min(limit, max(1, rows))
    return 1 << (limit.bit_length() - 1)


def _dot(a: jax.Array, b: jax.Array, prec: lax.Precision, contract_b: int = 0) -> jax.Array:
    """`a @ b` (or `a @ b.T` with `contract_b=1`), accumulated in float32."""
    return lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())), precision=prec,
                           preferred_element_type=F32)


def _kernel(lr_ref, lc_ref, q_ref, k_ref, v_ref, o_ref, *, width: int, rows: int,
            col_moment: bool, prec: lax.Precision) -> None:
    """One `(batch*head, Dv block)` program: all chunks in order, the state in the carry.

    `width` is the padded grid width (a power of two); `col_moment` weights every image
    pair by `|dc|` (mask and Toeplitz), the extra pass of the `log b` gradient.
    """
    c_tok = rows * width
    dk, bdv = q_ref.shape[-1], v_ref.shape[-1]
    lr, lc = lr_ref[...], lc_ref[...]  # (1, 1): broadcast without scalar extraction
    shift = width.bit_length() - 1  # token -> (row, column) by shift and mask

    i = lax.broadcasted_iota(jnp.int32, (c_tok, 1), 0)
    j = lax.broadcasted_iota(jnp.int32, (1, c_tok), 1)
    causal = j <= i
    dr = (lax.shift_right_logical(i, shift) - lax.shift_right_logical(j, shift)).astype(F32)
    dc = jnp.abs((i & (width - 1)) - (j & (width - 1))).astype(F32)
    # Zero the exponent of masked pairs first: exp of a positive one could overflow.
    mask = jnp.where(causal, jnp.exp(jnp.where(causal, dr * lr + dc * lc, 0.0)), 0.0)
    cdist = jnp.abs(lax.broadcasted_iota(jnp.int32, (width, 1), 0)
                    - lax.broadcasted_iota(jnp.int32, (1, width), 1)).astype(F32)
    toe = jnp.exp(cdist * lc)
    if col_moment:
        mask, toe = mask * dc, toe * cdist
    row_id = lax.broadcasted_iota(jnp.int32, (rows, 1, 1), 0)

    def load(ref, start, size):
        return ref[pl.ds(pl.multiple_of(start, size), size), :].astype(F32)

    def chunk(n, state):
        start = n * c_tok
        q, k, v = load(q_ref, start, c_tok), load(k_ref, start, c_tok), load(v_ref, start, c_tok)
        out = _dot(_dot(q, k, prec, contract_b=1) * mask, v, prec)  # intra-chunk, [C, bDv]
        smoothed = _dot(toe, state.reshape(width, dk * bdv), prec).reshape(width, dk, bdv)
        new_state = jnp.exp(lr * rows)[None] * state
        inter = jnp.zeros((rows, width, bdv), F32)
        for r in range(rows):  # static: R = C / w' is small
            row0 = start + r * width
            q_r, k_r, v_r = (load(x, row0, width) for x in (q_ref, k_ref, v_ref))
            read = jnp.sum(q_r[:, :, None] * smoothed, axis=1) * jnp.exp(lr * r)
            inter = jnp.where(row_id == r, read[None], inter)
            k_r = k_r * jnp.exp(lr * (rows - r))
            new_state = new_state + k_r[:, :, None] * v_r[:, None, :]
        out = out + inter.reshape(c_tok, bdv)
        o_ref[pl.ds(pl.multiple_of(start, c_tok), c_tok), :] = out.astype(o_ref.dtype)
        return new_state

    n_chunks = q_ref.shape[0] // c_tok
    lax.fori_loop(0, n_chunks, chunk, jnp.zeros((width, dk, bdv), F32))


def run(q: jax.Array, k: jax.Array, v: jax.Array, logs: jax.Array, width: int, rows: int,
        interpret: bool, col_moment: bool = False,
        precision: lax.Precision = lax.Precision.HIGHEST) -> jax.Array:
    """The kernel on `[BH, n*C, D]` float32 (batch-major, on the padded grid of `width`
    columns) and the flat `[2H]` `(row, col)` logs; returns `[BH, n*C, Dv]` float32.

    Every size must already be Triton-ready (`padded`, `rows_per_chunk`): checked here.
    `interpret=True` runs Pallas' generic interpreter (CPU tests). `precision` of the two
    matmuls (`precision.precision` of the caller's input dtype).
    """
    bh, t, dk = q.shape
    dv = v.shape[-1]
    c_tok = rows * width
    for name, size in (("width", width), ("Dk", dk), ("Dv", dv), ("rows * width", c_tok)):
        if size < MIN_DIM or size & (size - 1):
            raise ValueError(f"gpu chunked kernel: {name} = {size} must be a power of two "
                             f">= {MIN_DIM}")
    if t % c_tok:
        raise ValueError(f"gpu chunked kernel: T = {t} is not a multiple of C = {c_tok}")
    bdv = min(BLOCK_DV, dv)
    heads = logs.shape[0] // 2
    # Per (batch*head) (1, 1) blocks of the log decays; rows of BH are batch-major.
    lr, lc = (jnp.tile(x, bh // heads).reshape(bh, 1, 1) for x in (logs[0::2], logs[1::2]))
    log_spec = pl.BlockSpec((None, 1, 1), lambda b, d: (b, 0, 0))
    seq_spec = pl.BlockSpec((None, t, dk), lambda b, d: (b, 0, 0))  # whole sequence
    val_spec = pl.BlockSpec((None, t, bdv), lambda b, d: (b, 0, d))  # its Dv block
    kernel = functools.partial(_kernel, width=width, rows=rows, col_moment=col_moment,
                               prec=precision)
    return pl.pallas_call(
        kernel,
        grid=(bh, dv // bdv),
        in_specs=[log_spec, log_spec, seq_spec, seq_spec, val_spec],
        out_specs=val_spec,
        out_shape=jax.ShapeDtypeStruct((bh, t, dv), F32),
        # One sequential loop with a large carry: no software pipelining to share it with.
        compiler_params=plt.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
    )(lr, lc, q, k, v)
