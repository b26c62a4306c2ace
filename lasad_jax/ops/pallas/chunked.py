"""Long-sequence Pallas kernel for the `lasad` variant: the chunked form of DESIGN.md §1.

One kernel does all the work, forward and backward. Its grid is `(batch*heads, chunks)`;
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

Status: tested in interpret mode on CPU; the forward and backward lower to Mosaic
(`lower(lowering_platforms=("tpu",))`) but are not yet compiled or timed on a TPU. The
`C x C` intra-chunk scores and mask live in VMEM, so keep `C` around 512 there (or tile
the intra-chunk product flash-style) until measured.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lasad_jax.ops.reference import masked_attention


def _kernel(logs_ref, q_ref, k_ref, v_ref, o_ref, state_ref, *, width: int, rows: int,
            heads: int, col_moment: bool) -> None:
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
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32) * mask
    out = jnp.dot(scores, v, preferred_element_type=jnp.float32)

    # Earlier chunks, read from the smoothed column states.
    ci = jax.lax.broadcasted_iota(jnp.int32, (width, width), 0)
    cj = jax.lax.broadcasted_iota(jnp.int32, (width, width), 1)
    cdist = jnp.abs(ci - cj).astype(jnp.float32)
    toe = jnp.exp(cdist * lc)
    if col_moment:
        toe = toe * cdist
    state = state_ref[...]  # [w, Dk, Dv]
    smoothed = jnp.dot(toe, state.reshape(width, dk * dv),
                       preferred_element_type=jnp.float32).reshape(width, dk, dv)
    r_off = jax.lax.broadcasted_iota(jnp.int32, (rows, 1, 1), 0).astype(jnp.float32)
    # Column-major views [w, R, D]: the tokens of each column together.
    qg = (q.reshape(rows, width, dk) * jnp.exp(r_off * lr)).transpose(1, 0, 2)
    inter = jnp.einsum("crd,cde->cre", qg, smoothed, preferred_element_type=jnp.float32)
    out = out + inter.transpose(1, 0, 2).reshape(c_tok, dv)
    o_ref[0] = out.astype(o_ref.dtype)

    # Carry: decay by a^R, add this chunk's keys decayed to its end. The column-moment
    # pass reads the same states (the |dc| weight sits in the mask and the Toeplitz).
    kg = (k.reshape(rows, width, dk) * jnp.exp((rows - r_off) * lr)).transpose(1, 0, 2)
    vg = v.reshape(rows, width, dv).transpose(1, 0, 2)
    kv = jnp.einsum("crd,cre->cde", kg, vg, preferred_element_type=jnp.float32)
    state_ref[...] = jnp.exp(rows * lr) * state + kv


def _run(q, k, v, logs, width: int, rows: int, interpret: bool, col_moment: bool = False):
    """The kernel on `[BH, n*C, D]` float32 blocks (batch-major) and the `[2H]` logs.

    The logs are a flat `(row, col)` per head in SMEM: a 1D array because SMEM pads the
    minor dimension of 2D arrays.
    """
    bh, t, dk = q.shape
    dv = v.shape[-1]
    c_tok = rows * width
    n = t // c_tok
    tok_spec = lambda d: pl.BlockSpec((1, c_tok, d), lambda b, i: (b, i, 0))
    kernel = functools.partial(_kernel, width=width, rows=rows, heads=logs.shape[0] // 2,
                               col_moment=col_moment)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _image(q, k, v, log_row, log_col, width, rows, interpret):
    """Image-token attention on padded `[B, H, n*C, D]` float32; logs are `[H]`."""
    return _image_fwd(q, k, v, log_row, log_col, width, rows, interpret)[0]


def _flat(x):
    return x.reshape(-1, *x.shape[2:])


def _logs(log_row, log_col):
    return jnp.stack([log_row, log_col], -1).astype(jnp.float32).reshape(-1)


def _image_fwd(q, k, v, log_row, log_col, width, rows, interpret):
    b, h, t, _ = q.shape
    o = _run(_flat(q), _flat(k), _flat(v), _logs(log_row, log_col), width, rows,
             interpret).reshape(b, h, t, -1)
    return o, (q, k, v, log_row, log_col, o)


def _image_bwd(width, rows, interpret, res, do):
    q, k, v, log_row, log_col, o = res
    b, h, t, _ = q.shape
    logs = _logs(log_row, log_col)
    run = lambda x, y, z, **kw: _run(_flat(x), _flat(y), _flat(z), logs, width, rows,
                                     interpret, **kw).reshape(b, h, t, -1)
    flip = lambda x: x[:, :, ::-1]
    dq = run(do, v, k)
    dk = flip(run(flip(v), flip(do), flip(q)))
    dv = flip(run(flip(k), flip(q), flip(do)))
    row = (jnp.arange(t) // width).astype(jnp.float32)[:, None]
    d_log_row = jnp.sum(row * (do * o), axis=(0, 2, 3)) - jnp.sum(row * (v * dv), axis=(0, 2, 3))
    d_log_col = jnp.sum(do * run(q, k, v, col_moment=True), axis=(0, 2, 3))
    return (dq, dk, dv, d_log_row.astype(log_row.dtype), d_log_col.astype(log_col.dtype))


_image.defvjp(_image_fwd, _image_bwd)


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
) -> jax.Array:
    """`lasad` attention (DESIGN.md §1) for `q, k: [B, T, H, Dk]`, `v: [B, T, H, Dv]`.

    Computes in float32 and returns q's dtype; differentiable in q, k, v and the `[H]` log
    decays. `interpret=True` runs the TPU kernel in the Pallas interpreter (CPU tests).
    """
    out_dtype = q.dtype
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    total = q.shape[1]
    num_image = total - num_prefix
    outs = []
    if num_prefix:
        qp, kp, vp = q[:, :num_prefix], k[:, :num_prefix], v[:, :num_prefix]
        # Prefix slots see each other causally and undecayed: the `linear` mask.
        outs.append(masked_attention("linear", qp, kp, vp, width=1, num_prefix=0,
                                     log_row=log_row, log_col=log_col))
    if num_image:
        rows_needed = -(-num_image // width)
        rows = max(1, min(rows_per_chunk, rows_needed))
        c_tok = rows * width
        padded = -(-num_image // c_tok) * c_tok
        # Padding to whole chunks sits after the last real token: causality hides it from
        # real queries and its zero keys and values add nothing to the states.
        to_bhtd = lambda x: jnp.pad(x[:, num_prefix:], ((0, 0), (0, padded - num_image),
                                                       (0, 0), (0, 0))).transpose(0, 2, 1, 3)
        o = _image(to_bhtd(q), to_bhtd(k), to_bhtd(v), log_row.astype(jnp.float32),
                   log_col.astype(jnp.float32), width, rows, interpret)
        o = o.transpose(0, 2, 1, 3)[:, :num_image]
        if num_prefix:
            # Every image token reads the prefix state sum_j k_j v_j^T with weight 1.
            s_prefix = jnp.einsum("bjhd,bjhe->bhde", kp, vp)
            o = o + jnp.einsum("bihd,bhde->bihe", q[:, num_prefix:], s_prefix)
        outs.append(o)
    out = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    return out.astype(out_dtype)
