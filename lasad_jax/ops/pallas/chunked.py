"""Long-sequence Pallas kernel for the `lasad` variant: the chunked form of DESIGN.md §1.

One kernel does all the work, forward and backward; this module holds the TPU (Mosaic)
runner `_run`, the backend-neutral `custom_vjp` around it, and the layout. The GPU (Triton)
runner, `chunked_gpu.run`, computes the same per-chunk steps with the same contract, so the
backward below serves both (`backend` picks the runner). TPU grid: `(batch*heads, chunks)`;
the chunk axis is sequential and carries the per-column states `A(c)` (`w x Dk x Dv`) in a
VMEM scratch, so the states never leave the core between chunks. A chunk is `R` whole grid
rows (`C = R*w` tokens). Each step:

* intra-chunk: the exact masked product `((q k^T) * M) v`, the mask built from iota
  indices (never a `T x T` array);
* earlier chunks: a query at row offset `dr`, column `c` adds `a^dr q . H(c)`, `H = T_b A`
  (the `w x w` column Toeplitz matmul);
* carry: `A <- a^R A + sum_r a^(R - r) k v^T` per column.

Why one kernel suffices for the backward (`jax.custom_vjp`):

* `dq_t = sum_{s<=t} M[t,s] (do_t . v_s) k_s` is the forward with `(q, k, v) -> (do, v, k)`.
* `dk`, `dv` sum over later queries. Reversing the (row-padded) grid maps `(r, c)` to
  `(rows-1-r, w-1-c)`, which keeps `|dr|`, `|dc|` and turns "later" into "earlier", so they
  are the forward on flipped sequences.
* `d log a = sum_{t,s} W[t,s] (r_t - r_s)` with `W = M (q.k)(do.v)`; the row distance splits,
  and `sum_s W[t,s] = do_t . o_t`, `sum_t W[t,s] = v_s . dv_s`, so it costs no kernel.
* `d log b = sum W |c_t - c_s|` does not split; it is the forward with the weights
  `|dc| b^|dc|` (mask and Toeplitz matrix both times `|dc|`): one more call, `col_moment`.

Prefix slots (undecayed global memory) are handled outside the kernel in plain JAX: they
are `P` tokens, an ordinary causal sum plus one `Dk x Dv` state every image token reads.

Layout (`lasad_chunked_pallas`): the image tokens go on a grid of `w` columns (TPU) or of
`chunked_gpu.padded(w)` columns with Dk, Dv padded likewise (GPU), zero tokens filling each
row's end and whole rows up to a chunk multiple. Real tokens keep their (row, column), so
the padding is exact (see `chunked_gpu`); the kernels then see `width` = the padded width.

Status: tested in interpret mode on CPU; the forward and backward lower to Mosaic
(`lower(lowering_platforms=("tpu",))`) and, for the GPU runner, to Triton IR for CUDA. The
GPU runner has compiled and run on an H200 (exact, float32); neither is timed, and no TPU
has run the Mosaic one. On TPU the `C x C` intra-chunk scores
and mask live in VMEM, so keep `C` around 512 there (or tile the intra-chunk product
flash-style) until measured.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lasad_jax.ops.pallas import chunked_gpu
from lasad_jax.ops.pallas.precision import precision
from lasad_jax.ops.reference import masked_attention


def _kernel(logs_ref, q_ref, k_ref, v_ref, o_ref, state_ref, *, width: int, rows: int,
            heads: int, col_moment: bool, precision: jax.lax.Precision) -> None:
    """One `(batch*head, chunk)` step; `state_ref` holds the column states at chunk start."""
    bh, chunk = pl.program_id(0), pl.program_id(1)

    @pl.when(chunk == 0)
    def _init():
        state_ref[...] = jnp.zeros_like(state_ref)

    head = jax.lax.rem(bh, np.int32(heads))
    lr, lc = logs_ref[2 * head], logs_ref[2 * head + 1]
    c_tok = rows * width
    q, k, v = q_ref[0], k_ref[0], v_ref[0]  # [C, Dk], [C, Dk], [C, Dv]
    dk, dv = q.shape[-1], v.shape[-1]

    # Intra-chunk weights from token indices; a chunk starts on a row boundary.
    i = jax.lax.broadcasted_iota(jnp.int32, (c_tok, c_tok), 0)
    j = jax.lax.broadcasted_iota(jnp.int32, (c_tok, c_tok), 1)
    causal = j <= i
    w32 = np.int32(width)  # int32 even when x64 is on
    # lax.div / lax.rem: indices are nonnegative, so truncation is floor and Mosaic needs
    # no sign fix-up.
    dr = (jax.lax.div(i, w32) - jax.lax.div(j, w32)).astype(jnp.float32)
    dc = jnp.abs(jax.lax.rem(i, w32) - jax.lax.rem(j, w32)).astype(jnp.float32)
    # Zero the exponent of masked pairs first: exp of a positive one could overflow.
    mask = jnp.where(causal, jnp.exp(jnp.where(causal, dr * lr + dc * lc, 0.0)), 0.0)
    if col_moment:
        mask = mask * dc
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32) * mask
    out = jnp.dot(scores, v, precision=precision, preferred_element_type=jnp.float32)

    # Earlier chunks, read from the smoothed column states.
    ci = jax.lax.broadcasted_iota(jnp.int32, (width, width), 0)
    cj = jax.lax.broadcasted_iota(jnp.int32, (width, width), 1)
    cdist = jnp.abs(ci - cj).astype(jnp.float32)
    toe = jnp.exp(cdist * lc)
    if col_moment:
        toe = toe * cdist
    state = state_ref[...]  # [w, Dk, Dv]
    smoothed = jnp.dot(toe, state.reshape(width, dk * dv), precision=precision,
                       preferred_element_type=jnp.float32).reshape(width, dk, dv)
    r_off = jax.lax.broadcasted_iota(jnp.int32, (rows, 1, 1), 0).astype(jnp.float32)
    # Column-major views [w, R, D]: the tokens of each column together.
    qg = (q.reshape(rows, width, dk) * jnp.exp(r_off * lr)).transpose(1, 0, 2)
    inter = jnp.einsum("crd,cde->cre", qg, smoothed, precision=precision,
                       preferred_element_type=jnp.float32)
    out = out + inter.transpose(1, 0, 2).reshape(c_tok, dv)
    o_ref[0] = out.astype(o_ref.dtype)

    # Carry: decay by a^R, add this chunk's keys decayed to its end. The column-moment
    # pass reads the same states (the |dc| weight sits in the mask and the Toeplitz).
    kg = (k.reshape(rows, width, dk) * jnp.exp((rows - r_off) * lr)).transpose(1, 0, 2)
    vg = v.reshape(rows, width, dv).transpose(1, 0, 2)
    kv = jnp.einsum("crd,cre->cde", kg, vg, precision=precision,
                    preferred_element_type=jnp.float32)
    state_ref[...] = jnp.exp(rows * lr) * state + kv


def _run(q, k, v, logs, width: int, rows: int, interpret: bool, col_moment: bool = False,
         precision: jax.lax.Precision = jax.lax.Precision.HIGHEST):
    """The kernel on `[BH, n*C, D]` float32 blocks (batch-major) and the `[2H]` logs;
    `precision` of its products (`precision.precision` of the caller's input dtype).


    The logs are a flat `(row, col)` per head in SMEM: a 1D array because SMEM pads the
    minor dimension of 2D arrays.
    """
    bh, t, dk = q.shape
    dv = v.shape[-1]
    c_tok = rows * width
    n = t // c_tok

    def tok_spec(d: int) -> pl.BlockSpec:
        return pl.BlockSpec((1, c_tok, d), lambda b, i: (b, i, 0))

    kernel = functools.partial(_kernel, width=width, rows=rows, heads=logs.shape[0] // 2,
                               col_moment=col_moment, precision=precision)
    return pl.pallas_call(
        kernel,
        grid=(bh, n),
        in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), tok_spec(dk), tok_spec(dk),
                  tok_spec(dv)],
        out_specs=tok_spec(dv),
        out_shape=jax.ShapeDtypeStruct((bh, t, dv), jnp.float32),
        scratch_shapes=[pltpu.VMEM((width, dk, dv), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
    )(logs, q, k, v)


# Per-call kernel runners by backend; both `(q, k, v, logs, width, rows, interpret,
# col_moment=False, precision=HIGHEST) -> [BH, n*C, Dv]` so the custom VJP below serves both.
_RUNNERS = {"tpu": _run, "gpu": chunked_gpu.run}
BACKENDS = tuple(_RUNNERS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _image(q, k, v, log_row, log_col, width, rows, interpret, backend, prec):
    """Image-token attention on padded `[B, H, n*C, D]` float32; logs are `[H]`."""
    return _image_fwd(q, k, v, log_row, log_col, width, rows, interpret, backend, prec)[0]


def _flat(x):
    return x.reshape(-1, *x.shape[2:])


def _logs(log_row, log_col):
    return jnp.stack([log_row, log_col], -1).astype(jnp.float32).reshape(-1)


def _image_fwd(q, k, v, log_row, log_col, width, rows, interpret, backend, prec):
    b, h, t, _ = q.shape
    o = _RUNNERS[backend](_flat(q), _flat(k), _flat(v), _logs(log_row, log_col), width, rows,
                          interpret, precision=prec).reshape(b, h, t, -1)
    return o, (q, k, v, log_row, log_col, o)


def _image_bwd(width, rows, interpret, backend, prec, res, do):
    q, k, v, log_row, log_col, o = res
    b, h, t, _ = q.shape
    logs = _logs(log_row, log_col)

    def run(x, y, z, **kw):
        return _RUNNERS[backend](_flat(x), _flat(y), _flat(z), logs, width, rows, interpret,
                                 precision=prec, **kw).reshape(b, h, t, -1)

    def flip(x):
        return x[:, :, ::-1]

    dq = run(do, v, k)
    dk = flip(run(flip(v), flip(do), flip(q)))
    dv = flip(run(flip(k), flip(q), flip(do)))
    row = (jnp.arange(t) // width).astype(jnp.float32)[:, None]
    d_log_row = jnp.sum(row * (do * o), axis=(0, 2, 3)) - jnp.sum(row * (v * dv), axis=(0, 2, 3))
    d_log_col = jnp.sum(do * run(q, k, v, col_moment=True), axis=(0, 2, 3))
    return (dq, dk, dv, d_log_row.astype(log_row.dtype), d_log_col.astype(log_col.dtype))


_image.defvjp(_image_fwd, _image_bwd)


def _grid_layout(width: int, dk: int, dv: int, rows_per_chunk: int, rows_needed: int,
                 backend: str) -> tuple[int, int, int, int]:
    """The kernel's grid: `(width, Dk, Dv, rows per chunk)`, padded for Triton on GPU."""
    if backend == "gpu":
        rows = chunked_gpu.rows_per_chunk(width, rows_per_chunk)
        # Never more rows than the (power-of-two rounded) image needs.
        rows = min(rows, pl.next_power_of_2(rows_needed))
        return (chunked_gpu.padded(width), chunked_gpu.padded(dk), chunked_gpu.padded(dv),
                rows)
    return width, dk, dv, max(1, min(rows_per_chunk, rows_needed))


def lasad_chunked_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    num_prefix: int,
    log_row: jax.Array,
    log_col: jax.Array,
    rows_per_chunk: int,
    interpret: bool = False,
    backend: str = "tpu",
) -> jax.Array:
    """`lasad` attention (DESIGN.md §1) for `q, k: [B, T, H, Dk]`, `v: [B, T, H, Dv]`.

    Computes in float32 and returns q's dtype; differentiable in q, k, v and the `[H]` log
    decays. `backend`: "tpu" (Mosaic, this module's kernel) or "gpu" (Triton,
    `chunked_gpu`; there `rows_per_chunk` is an upper bound, rounded down to a power of two
    and capped at `chunked_gpu.CHUNK_TOKENS` tokens per chunk). `interpret=True` runs the
    kernel in the Pallas interpreter (CPU tests).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    out_dtype = q.dtype
    prec = precision(q.dtype)  # decided before the float32 cast below
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    b, total, h, dk = q.shape
    dv = v.shape[-1]
    num_image = total - num_prefix
    outs = []
    if num_prefix:
        qp, kp, vp = q[:, :num_prefix], k[:, :num_prefix], v[:, :num_prefix]
        # Prefix slots see each other causally and undecayed: the `linear` mask.
        outs.append(masked_attention("linear", qp, kp, vp, width=1, num_prefix=0,
                                     log_row=log_row, log_col=log_col))
    if num_image:
        rows_needed = -(-num_image // width)
        wk, dk_k, dv_k, rows = _grid_layout(width, dk, dv, rows_per_chunk, rows_needed, backend)
        rows_pad = -(-rows_needed // rows) * rows

        def to_kernel(x: jax.Array, depth: int) -> jax.Array:
            # [B, L, H, D] -> [B, H, rows_pad * wk, depth]. Zero tokens fill the last row,
            # the columns past `width` (GPU) and whole rows up to a chunk multiple; zero
            # features pad Dk, Dv (GPU). Exact: real tokens keep their (row, column), so
            # every decay is unchanged; zero keys and values add nothing to any output or
            # state; padded queries are sliced off below.
            x = jnp.pad(x[:, num_prefix:], ((0, 0), (0, rows_needed * width - num_image),
                                            (0, 0), (0, 0)))
            x = x.reshape(b, rows_needed, width, h, x.shape[-1])
            x = jnp.pad(x, ((0, 0), (0, rows_pad - rows_needed), (0, wk - width), (0, 0),
                            (0, depth - x.shape[-1])))
            return x.reshape(b, rows_pad * wk, h, depth).transpose(0, 2, 1, 3)

        o = _image(to_kernel(q, dk_k), to_kernel(k, dk_k), to_kernel(v, dv_k),
                   log_row.astype(jnp.float32), log_col.astype(jnp.float32), wk, rows,
                   interpret, backend, prec)
        o = o.transpose(0, 2, 1, 3).reshape(b, rows_pad, wk, h, dv_k)
        o = o[:, :rows_needed, :width, :, :dv].reshape(b, rows_needed * width, h, dv)
        o = o[:, :num_image]
        if num_prefix:
            # Every image token reads the prefix state sum_j k_j v_j^T with weight 1.
            s_prefix = jnp.einsum("bjhd,bjhe->bhde", kp, vp)
            o = o + jnp.einsum("bihd,bhde->bihe", q[:, num_prefix:], s_prefix)
        outs.append(o)
    out = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    return out.astype(out_dtype)
