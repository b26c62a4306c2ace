"""Per-column kernels of the chunkwise-parallel `lasad` form: chunk sums and state reads.

Between chunks, `lasad` keeps one `Dk x Dv` state per grid column (docs/operator.md). Both
places where tokens meet those states are, for one chunk and one column, a product over
the chunk's `R` rows of that column:

* `column_outer` (the chunk sums, step 2): `S[c] = sum_r e_r x[c, r]^T y[c, r]`, with
  `x = k`, `y = v` and `e_r = a^(R - r)` (each key decayed to its chunk's end);
* `column_apply` (the inter-chunk read, step 4): `o[c, r] = e_r x[c, r] @ M[c]`, with
  `x = q`, `M = H` (the smoothed states) and `e_r = a^r` (each query decayed back to its
  chunk's start).

Each is the other's backward: `column_outer`'s gradients are two `column_apply` products
(on GPU one kernel computes both, reading each `dS` once and writing each gradient in its
input's layout; `_outer_bwd` says why not on TPU) and `column_apply`'s are one of each, so
both sit behind a `jax.custom_vjp` whose backward runs kernels too. The decay gradient is
an elementwise identity, `d log a = sum_r tick_r <x_r, dx_r>`: the kernel that computes
`dx` also returns its program's share of the sum, from `dx` in float32, and writes `dx`
in the input dtype, so no float32 gradient is read back. The decay `e_r` is built in the
kernel from the row index.

Layout: `[M, W, R', D]` blocks, `M` = batch * heads * chunks, `W` the grid columns and
`R'` the rows of one chunk, so each column of each chunk is a `[R', D]` tile and every
product is a 2-D matmul (`[Dk, R'] @ [R', Dv]` or `[R', Dk] @ [Dk, Dv]`). `column_outer`
takes `x` transposed (`[M, W, D, R']`), so neither of them needs a transposed-LHS matmul
(the GPU's fused gradient kernel does one, `x^T dS`, which Triton transposes on chip).
A program handles `cols` columns of one chunk. For Triton every block side is a power of
two and every matmul side at least 16: the caller pads rows, columns and features with
zeros (exact: zero keys, values and queries add and read nothing; padded rows get `e = 0`).
`column_outer` multiplies operands in the input dtype (bfloat16 in training) with float32
accumulation and writes the sums in `cfg.state_dtype`. A product with a state or a state's
cotangent runs in that array's storage dtype: float32 (at `cfg.precision`, TF32 on GPUs
for 16-bit inputs) for float32 states, 16-bit operands with float32 accumulation for
16-bit ones.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lasad_jax.ops.pallas.masked import call
from lasad_jax.ops.pallas.masked_kernels import sum11

F32 = jnp.float32
CLOCKS = ("end", "start")  # e_r = a^(R - r) (to the chunk's end) or a^r (from its start)


@dataclasses.dataclass(frozen=True)
class ColumnConfig:
    """Static facts of one call (hashable: `nondiff_argnums` of the VJPs)."""

    rows: int  # R, the real rows of a chunk; rows r >= R are padding (e_r = 0)
    cols: int  # columns per program; divides W
    interpret: bool
    backend: str
    precision: lax.Precision
    dtype: str  # the input dtype, in which the products run
    # Storage of the chunk sums `column_outer` writes (and of every state and state
    # cotangent after it): "float32", or the 16-bit input dtype (chunked.py, "State
    # storage").
    state_dtype: str = "float32"


def _ticks(cfg: ColumnConfig, clock: str, shape: tuple[int, int], axis: int):
    """`(tick_r, valid_r)`: the decay exponent of row r in units of `log a`, and r < R."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    r = lax.broadcasted_iota(jnp.int32, shape, axis)
    tick = (cfg.rows - r) if clock == "end" else r
    return tick.astype(F32), r < cfg.rows


def _decay(cfg: ColumnConfig, clock: str, shape, axis, la):
    tick, valid = _ticks(cfg, clock, shape, axis)
    # Padded rows: exponent zeroed before exp (it may be positive), weight 0.
    return jnp.where(valid, jnp.exp(jnp.where(valid, tick, 0.0) * la), 0.0)


def _outer_kernel(la_ref, xt_ref, y_ref, o_ref, *, cfg: ColumnConfig, clock: str):
    """`o[c] = (xt[c] * e) @ y[c]` for the program's `cols` columns."""
    rp = xt_ref.shape[-1]
    e = _decay(cfg, clock, (1, rp), 1, la_ref[...])  # [1, R'], along xt's last axis
    for c in range(cfg.cols):
        xt = (xt_ref[c].astype(F32) * e).astype(cfg.dtype)
        o_ref[c] = lax.dot_general(xt, y_ref[c].astype(cfg.dtype), (((1,), (0,)), ((), ())),
                                   precision=cfg.precision,
                                   preferred_element_type=F32).astype(o_ref.dtype)


def _operand(x: jax.Array) -> jax.Array:
    """A product's operand in the dtype the product runs in: 16-bit as it is (bf16 tensor-
    core products, float32 accumulation), anything wider as float32."""
    return x if jnp.dtype(x.dtype).itemsize < 4 else x.astype(F32)


def _log_weight(cfg: ColumnConfig, clock: str, rp: int):
    """`[R', 1]`: each row's exponent of `e_r` (0 on padded rows), the weight of its
    `<x_r, dx_r>` in `d log a = sum_r tick_r <x_r, dx_r>`."""
    tick, valid = _ticks(cfg, clock, (rp, 1), 0)
    return jnp.where(valid, tick, 0.0)


def _apply_kernel(la_ref, x_ref, m_ref, *refs, cfg: ColumnConfig, clock: str,
                  transpose: bool, with_log: bool):
    """`o[c] = e * (x[c] @ m[c])` (or `m[c]^T`) for the program's `cols` columns; with
    `with_log` (a gradient: `refs` = `w, o, share`), also this program's share of
    `d log a`, `sum_c sum_r tick_r <w[c, r], o[c, r]>`, from `o` before its rounding."""
    w_ref, o_ref, share_ref = refs if with_log else (None, *refs, None)
    rp = x_ref.shape[-2]
    e = _decay(cfg, clock, (rp, 1), 0, la_ref[...])  # [R', 1], along x's rows
    weight = _log_weight(cfg, clock, rp)
    contract = (((1,), (1,)), ((), ())) if transpose else (((1,), (0,)), ((), ()))
    share = jnp.zeros((1, 1), F32)
    for c in range(cfg.cols):
        # `m` is a state (or its cotangent): stored in float32, the product runs in float32
        # and `x` is widened; stored in 16 bits, both operands are 16-bit (`x` is q or an
        # output cotangent, already in the input dtype).
        m = _operand(m_ref[c])
        prod = lax.dot_general(x_ref[c].astype(m.dtype), m, contract,
                               precision=cfg.precision, preferred_element_type=F32)
        out = prod * e
        o_ref[c] = out.astype(o_ref.dtype)
        if with_log:
            share = share + sum11(weight * w_ref[c].astype(F32) * out)
    if with_log:
        share_ref[...] = share


def _outer_grads_kernel(la_ref, xt_ref, y_ref, ds_ref, dxt_ref, dy_ref, share_ref, *,
                        cfg: ColumnConfig, clock: str):
    """Both gradients of `column_outer` from one read of each `dS[c]`:
    `dy[c] = e * (xt[c]^T @ dS[c])` (rows scaled) and `dxt[c] = (dS[c] @ y[c]^T) * e`
    (columns scaled), each written in its input's layout and dtype, and this program's
    share of `d log a` (`sum tick_r <y_r, dy_r>`, as `_apply_kernel`). The products run
    in `dS`'s storage dtype, as `_apply_kernel`'s."""
    rp = xt_ref.shape[-1]
    la = la_ref[...]
    e_rows = _decay(cfg, clock, (rp, 1), 0, la)  # [R', 1], along dy's rows
    e_cols = _decay(cfg, clock, (1, rp), 1, la)  # [1, R'], along dxt's columns
    weight = _log_weight(cfg, clock, rp)
    share = jnp.zeros((1, 1), F32)
    for c in range(cfg.cols):
        ds = _operand(ds_ref[c])
        dy = lax.dot_general(xt_ref[c].astype(ds.dtype), ds, (((0,), (0,)), ((), ())),
                             precision=cfg.precision, preferred_element_type=F32) * e_rows
        dy_ref[c] = dy.astype(dy_ref.dtype)
        share = share + sum11(weight * y_ref[c].astype(F32) * dy)
        dxt = lax.dot_general(ds, y_ref[c].astype(ds.dtype), (((1,), (1,)), ((), ())),
                              precision=cfg.precision, preferred_element_type=F32)
        dxt_ref[c] = (dxt * e_cols).astype(dxt_ref.dtype)
    share_ref[...] = share


def _la_spec():
    return pl.BlockSpec((None, 1, 1), lambda m, w: (m, 0, 0))


def _cols_spec(cfg: ColumnConfig, a: int, b: int):
    return pl.BlockSpec((None, cfg.cols, a, b), lambda m, w: (m, w, 0, 0))


def _outer_call(cfg: ColumnConfig, clock: str, xt, y, la, out_dtype):
    m, w, dx, rp = xt.shape
    dy = y.shape[-1]
    kernel = functools.partial(_outer_kernel, cfg=cfg, clock=clock)
    return call(cfg.backend, cfg.interpret, kernel, (m, w // cfg.cols),
                [_la_spec(), _cols_spec(cfg, dx, rp), _cols_spec(cfg, rp, dy)],
                _cols_spec(cfg, dx, dy), jax.ShapeDtypeStruct((m, w, dx, dy), out_dtype))(la, xt, y)


def _share_spec():
    """One number per program: its share of a sum that XLA finishes."""
    return pl.BlockSpec((None, None, 1, 1), lambda m, w: (m, w, 0, 0))


def _shares(m: int, programs: int):
    return jax.ShapeDtypeStruct((m, programs, 1, 1), F32)


def _apply_call(cfg: ColumnConfig, clock: str, transpose: bool, x, mat, la, log_with=None,
                out_dtype=F32):
    """`_apply_kernel` over every column; with `log_with` (an array of the output's
    shape) also `d log a` per row of M, `[M, 1, 1]`: `(out, d_log_a)`."""
    m, w, rp, dx = x.shape
    dy = mat.shape[-2] if transpose else mat.shape[-1]
    with_log = log_with is not None
    kernel = functools.partial(_apply_kernel, cfg=cfg, clock=clock, transpose=transpose,
                               with_log=with_log)
    grid = (m, w // cfg.cols)
    inputs = [la, x, mat]
    in_specs = [_la_spec(), _cols_spec(cfg, rp, dx), _cols_spec(cfg, *mat.shape[-2:])]
    out_specs = [_cols_spec(cfg, rp, dy)]
    out_shape = [jax.ShapeDtypeStruct((m, w, rp, dy), out_dtype)]
    if with_log:
        inputs.append(log_with)
        in_specs.append(_cols_spec(cfg, rp, dy))
        out_specs.append(_share_spec())
        out_shape.append(_shares(m, grid[1]))
    outs = call(cfg.backend, cfg.interpret, kernel, grid, in_specs, out_specs,
                out_shape)(*inputs)
    return (outs[0], outs[1].sum(axis=1)) if with_log else outs[0]


def _outer_grads_call(cfg: ColumnConfig, clock: str, xt, y, ds, la):
    """`(dxt, dy, d_log_a)` of `column_outer` from `_outer_grads_kernel`."""
    m, w, dx, rp = xt.shape
    dy = y.shape[-1]
    kernel = functools.partial(_outer_grads_kernel, cfg=cfg, clock=clock)
    grid = (m, w // cfg.cols)
    dxt, dys, shares = call(
        cfg.backend, cfg.interpret, kernel, grid,
        [_la_spec(), _cols_spec(cfg, dx, rp), _cols_spec(cfg, rp, dy), _cols_spec(cfg, dx, dy)],
        [_cols_spec(cfg, dx, rp), _cols_spec(cfg, rp, dy), _share_spec()],
        [jax.ShapeDtypeStruct((m, w, dx, rp), xt.dtype),
         jax.ShapeDtypeStruct((m, w, rp, dy), y.dtype), _shares(m, grid[1])])(la, xt, y, ds)
    return dxt, dys, shares.sum(axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def column_outer(cfg: ColumnConfig, clock: str, xt, y, la):
    """`S[m, c] = sum_r e_r xt[m, c, :, r] y[m, c, r]^T`: `xt [M, W, Dx, R']`,
    `y [M, W, R', Dy]`, `la [M, 1, 1]` (log a per row of M); `[M, W, Dx, Dy]` in
    `cfg.state_dtype` (accumulated in float32)."""
    return _outer_call(cfg, clock, xt, y, la, cfg.state_dtype)


def _outer_fwd(cfg, clock, xt, y, la):
    return _outer_call(cfg, clock, xt, y, la, cfg.state_dtype), (xt, y, la)


def _outer_bwd(cfg, clock, res, ds):
    xt, y, la = res
    # d y_r = e_r x_r @ dS ; d x_r = e_r y_r @ dS^T.
    # d log a: sum_r tick_r <y_r, dy_r> (= e_r x_r dS y_r^T), summed in the kernels.
    if cfg.backend == "gpu":  # one kernel, one read of dS, no transposes around it
        return _outer_grads_call(cfg, clock, xt, y, ds, la)
    # TPU: two reads. The fused kernel compiles for Mosaic, but its gradients in `[D, R']`
    # put a chunk's rows on the 128-lane axis: compiled for a v5e-8, the peak at
    # T = 16384, D = 64 rose from 4.16 to 6.34 GiB (benchmarks/tpu_aot.py).
    dy, dla = _apply_call(cfg, clock, False, xt.swapaxes(-1, -2), ds, la, log_with=y,
                          out_dtype=y.dtype)
    dx = _apply_call(cfg, clock, True, y, ds, la, out_dtype=xt.dtype)
    return dx.swapaxes(-1, -2), dy, dla


column_outer.defvjp(_outer_fwd, _outer_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def column_apply(cfg: ColumnConfig, clock: str, transpose: bool, x, mat, la):
    """`o[m, c, r] = e_r x[m, c, r] @ mat[m, c]` (`mat^T` with `transpose`): `x [M, W, R', Dx]`,
    `mat [M, W, Dx, Dy]` (states, float32 or 16-bit), `la [M, 1, 1]`; float32
    `[M, W, R', Dy]`."""
    return _apply_call(cfg, clock, transpose, x, mat, la)


def _apply_fwd(cfg, clock, transpose, x, mat, la):
    return _apply_call(cfg, clock, transpose, x, mat, la), (x, mat, la)


def _apply_bwd(cfg, clock, transpose, res, do):
    x, mat, la = res
    do_in = do.astype(x.dtype)  # the products run in the input dtype
    dx, dla = _apply_call(cfg, clock, not transpose, do_in, mat, la, log_with=x,
                          out_dtype=x.dtype)
    # d mat = sum_r e_r x_r^T do_r (or its transpose): a column_outer over the rows.
    # Written in the state's dtype: a state's cotangent is stored as the state is.
    if transpose:
        dmat = _outer_call(cfg, clock, do_in.swapaxes(-1, -2), x, la, mat.dtype)
    else:
        dmat = _outer_call(cfg, clock, x.swapaxes(-1, -2), do_in, la, mat.dtype)
    return dx, dmat, dla


column_apply.defvjp(_apply_fwd, _apply_bwd)
