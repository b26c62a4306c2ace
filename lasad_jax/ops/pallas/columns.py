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
and `column_apply`'s are one of each, so both sit behind a `jax.custom_vjp` whose backward
runs kernels too. On GPU one kernel computes both gradients of either, reading each
state (or `dS`) and each token-side input once and writing each gradient in its input's
layout (`_outer_bwd` says why not on TPU). The decay gradient is
an elementwise identity, `d log a = sum_r tick_r <x_r, dx_r>`: the kernel that computes
`dx` also returns its program's share of the sum, from `dx` in float32, and writes `dx`
in the input dtype, so no float32 gradient is read back. The decay `e_r` is built in the
kernel from the row index.

Layouts (`LAYOUTS`, `_Blocks`). The states are `[M, W, Dx, Dy]`, `M` = chunks * batch *
heads, `W` the grid columns. The token side has two:
* "columns": `[M, W, R', D]` blocks, `R'` the (padded) rows of one chunk, built by the
  caller's transposes, so each column of each chunk is a `[R', D]` tile and every
  product is a 2-D matmul. `column_outer` takes `x` transposed (`[M, W, D, R']`), so
  neither needs a transposed-LHS matmul, which Mosaic lacks (the GPU's fused gradient
  kernel does one, `x^T dS`, which Triton transposes on chip). TPU, and GPU shapes that
  need padding.
* "tokens" (GPU): `[B, N, R, W, H, D]`, a free view of the sequence `[B, T, H, D]`; a
  column's tile is `[R, D]` rows `W * H * D` apart, read in place, and the sums contract
  its rows on chip. A call reads chunks `offset .. offset + N' - 1` of the view, so the
  sums (chunks 0 .. N-2) and the reads (chunks 1 .. N-1) take the same arrays without a
  slice; its gradients come back as those of the whole view.
A program handles `cols` columns of one chunk. For Triton every block side is a power of
two and every matmul side at least 16: in "columns" the caller pads rows, columns and
features with zeros (exact: zero keys, values and queries add and read nothing; padded
rows get `e = 0`); "tokens" is used only where nothing needs padding.
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
    # Where the token-side arrays lie: "columns", `[M, W, R', D]` (the caller transposes);
    # "tokens", `[B, N, R, W, H, D]`, a free view of the sequence `[B, T, H, D]` (GPU).
    layout: str = "columns"


LAYOUTS = ("columns", "tokens")


class _Blocks:
    """The grid of one call and the block of each kind of operand, in one layout.

    "columns": grid `(M, W/cols)`, every token-side array `[M, W, R', D]`.
    "tokens": grid `(N' * B, H, W/cols)` over `N'` chunks; token-side arrays are
    `[B, N*, R, W, H, D]` views of a sequence, read from chunk `offset` on, so that one
    array serves calls over different chunks without a slice. In both, the states and the
    decays are per row `m` of `M = N' * B * H` (chunk-major, then batch, then head)."""

    def __init__(self, cfg: ColumnConfig, la: jax.Array, x: jax.Array):
        """The grid over `la`'s rows (`M`); the width, and in "tokens" the batch and
        heads, come from the token-side array `x`."""
        if cfg.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {cfg.layout!r}")
        if cfg.layout == "tokens" and cfg.backend != "gpu":
            # The TPU backward transposes its operands, which the sequence views are not.
            raise ValueError(f"layout='tokens' needs backend='gpu', got {cfg.backend!r}; "
                             "use layout='columns'")
        self.cfg, self.m = cfg, la.shape[0]
        self.tokens = cfg.layout == "tokens"
        if self.tokens:
            self.width, self.batch, heads = x.shape[3], x.shape[0], x.shape[4]
            self.heads = heads
            self.grid = (self.m // heads, heads, self.width // cfg.cols)
            self._m = lambda i, h, c: (i * heads + h, c)
        else:
            self.width = x.shape[1]
            self.grid = (self.m, self.width // cfg.cols)
            self._m = lambda m_, c: (m_, c)

    def decay(self) -> pl.BlockSpec:
        return pl.BlockSpec((None, 1, 1), lambda *g: (self._m(*g)[0], 0, 0))

    def state(self, a: int, b: int) -> pl.BlockSpec:
        """`cols` columns of one row of a `[M, W, a, b]` state array."""
        return pl.BlockSpec((None, self.cfg.cols, a, b), lambda *g: (*self._m(*g), 0, 0))

    def share(self) -> pl.BlockSpec:
        """One number per program: its share of a sum that XLA finishes."""
        return pl.BlockSpec((None, None, 1, 1), lambda *g: (*self._m(*g), 0, 0))

    def seq(self, a: int, b: int, offset: int = 0) -> pl.BlockSpec:
        """A token-side array: `[a, b]` tiles per column (`[R', D]`, or `[D, R']` for a
        transposed one, "columns" only); in "tokens", `[R, D]` at chunk `offset` on."""
        if not self.tokens:
            return self.state(a, b)
        batch = self.batch
        return pl.BlockSpec((None, None, a, self.cfg.cols, None, b),
                            lambda i, h, c: (i % batch, i // batch + offset, 0, c, h, 0))

    def seq_shape(self, a: int, b: int, dtype, chunks: int | None = None
                  ) -> jax.ShapeDtypeStruct:
        """A token-side output of `[a, b]` tiles: over the grid's chunks, or in "tokens"
        an array of `chunks` chunks that the grid writes from some offset on (`seq`)."""
        if not self.tokens:
            return jax.ShapeDtypeStruct((self.m, self.width, a, b), dtype)
        chunks = chunks or self.m // (self.batch * self.heads)
        return jax.ShapeDtypeStruct((self.batch, chunks, a, self.width, self.heads, b), dtype)

    def x_tile(self, x: jax.Array) -> tuple[int, int]:
        """The tile of `column_outer`'s `x`: `[R, Dx]` in "tokens", `[Dx, R']` (transposed)
        in "columns"."""
        return (x.shape[2], x.shape[-1]) if self.tokens else x.shape[2:]


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


def _operand(x: jax.Array) -> jax.Array:
    """A product's operand in the dtype the product runs in: 16-bit as it is (bf16 tensor-
    core products, float32 accumulation), anything wider as float32."""
    return x if jnp.dtype(x.dtype).itemsize < 4 else x.astype(F32)


def _load(cfg: ColumnConfig, ref, c: int) -> jax.Array:
    """Column `c`'s tile of a token-side block."""
    return ref[:, c, :] if cfg.layout == "tokens" else ref[c]


def _store(cfg: ColumnConfig, ref, c: int, value: jax.Array) -> None:
    if cfg.layout == "tokens":
        ref[:, c, :] = value.astype(ref.dtype)
    else:
        ref[c] = value.astype(ref.dtype)


def _dot(cfg: ColumnConfig, a, b, contract) -> jax.Array:
    return lax.dot_general(a, b, (contract, ((), ())), precision=cfg.precision,
                           preferred_element_type=F32)


def _outer_kernel(la_ref, x_ref, y_ref, o_ref, *, cfg: ColumnConfig, clock: str):
    """`o[c] = (x[c] * e)^T @ y[c]` for the program's `cols` columns. "columns" takes `x`
    transposed (`[D, R']` tiles: no transposed-LHS product, which Mosaic lacks);
    "tokens" takes `[R, D]` tiles as they lie and contracts their rows."""
    tokens = cfg.layout == "tokens"
    rp = x_ref.shape[0] if tokens else x_ref.shape[-1]
    shape, axis = ((rp, 1), 0) if tokens else ((1, rp), 1)
    e = _decay(cfg, clock, shape, axis, la_ref[...])  # along x's rows
    contract = ((0,), (0,)) if tokens else ((1,), (0,))
    for c in range(cfg.cols):
        x = (_load(cfg, x_ref, c).astype(F32) * e).astype(cfg.dtype)
        o_ref[c] = _dot(cfg, x, _load(cfg, y_ref, c).astype(cfg.dtype),
                        contract).astype(o_ref.dtype)


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
    rp = x_ref.shape[0] if cfg.layout == "tokens" else x_ref.shape[-2]
    e = _decay(cfg, clock, (rp, 1), 0, la_ref[...])  # [R', 1], along x's rows
    weight = _log_weight(cfg, clock, rp)
    contract = ((1,), (1,)) if transpose else ((1,), (0,))
    share = jnp.zeros((1, 1), F32)
    for c in range(cfg.cols):
        # `m` is a state (or its cotangent): stored in float32, the product runs in float32
        # and `x` is widened; stored in 16 bits, both operands are 16-bit (`x` is q or an
        # output cotangent, already in the input dtype).
        m = _operand(m_ref[c])
        out = _dot(cfg, _load(cfg, x_ref, c).astype(m.dtype), m, contract) * e
        _store(cfg, o_ref, c, out)
        if with_log:
            share = share + sum11(weight * _load(cfg, w_ref, c).astype(F32) * out)
    if with_log:
        share_ref[...] = share


def _outer_grads_kernel(la_ref, x_ref, y_ref, ds_ref, dx_ref, dy_ref, share_ref, *,
                        cfg: ColumnConfig, clock: str):
    """Both gradients of `column_outer` from one read of each `dS[c]`:
    `dy[c] = e * (x[c] @ dS[c])` and `dx[c] = e * (y[c] @ dS[c]^T)` (rows scaled; in
    "columns" `x` and `dx` are transposed, `[D, R']`, and `dx` is built so), each written
    in its input's layout and dtype, and this program's share of `d log a`
    (`sum tick_r <y_r, dy_r>`, as `_apply_kernel`). The products run in `dS`'s storage
    dtype, as `_apply_kernel`'s."""
    tokens = cfg.layout == "tokens"
    rp = y_ref.shape[0] if tokens else y_ref.shape[-2]
    la = la_ref[...]
    e_rows = _decay(cfg, clock, (rp, 1), 0, la)  # [R', 1], along dy's rows
    e_cols = _decay(cfg, clock, (1, rp), 1, la)  # [1, R'], along a transposed dx
    weight = _log_weight(cfg, clock, rp)
    share = jnp.zeros((1, 1), F32)
    for c in range(cfg.cols):
        ds = _operand(ds_ref[c])
        x = _load(cfg, x_ref, c).astype(ds.dtype)
        y = _load(cfg, y_ref, c).astype(ds.dtype)
        dy = _dot(cfg, x, ds, ((1,), (0,)) if tokens else ((0,), (0,))) * e_rows
        _store(cfg, dy_ref, c, dy)
        share = share + sum11(weight * y.astype(F32) * dy)
        if tokens:
            dx = _dot(cfg, y, ds, ((1,), (1,))) * e_rows  # [R, Dx]
        else:
            dx = _dot(cfg, ds, y, ((1,), (1,))) * e_cols  # [Dx, R']
        _store(cfg, dx_ref, c, dx)
    share_ref[...] = share


def _apply_grads_kernel(la_ref, x_ref, do_ref, m_ref, dx_ref, dm_ref, share_ref, *,
                        cfg: ColumnConfig, clock: str):
    """Both gradients of `column_apply` from one read of `x`, `do` and
    each `M[c]`: `dx[c] = e * (do[c] @ M[c]^T)` (written in `x`'s layout and dtype, with
    this program's share of `d log a` as `_apply_kernel`'s) and
    `dM[c] = sum_r e_r x[c, r]^T do[c, r]` (as `_outer_kernel`, in the state's storage).
    GPU: the `x^T do` product contracts a tile's rows, which Triton transposes on chip."""
    rp = x_ref.shape[0] if cfg.layout == "tokens" else x_ref.shape[-2]
    e = _decay(cfg, clock, (rp, 1), 0, la_ref[...])  # [R', 1], along the rows
    weight = _log_weight(cfg, clock, rp)
    share = jnp.zeros((1, 1), F32)
    for c in range(cfg.cols):
        m = _operand(m_ref[c])
        x = _load(cfg, x_ref, c)
        do = _load(cfg, do_ref, c).astype(cfg.dtype)
        dx = _dot(cfg, do.astype(m.dtype), m, ((1,), (1,))) * e
        _store(cfg, dx_ref, c, dx)
        share = share + sum11(weight * x.astype(F32) * dx)
        xe = (x.astype(F32) * e).astype(cfg.dtype)
        dm_ref[c] = _dot(cfg, xe, do, ((0,), (0,))).astype(dm_ref.dtype)
    share_ref[...] = share


def _apply_grads_call(cfg: ColumnConfig, clock: str, x, do, mat, la, offset=0, do_off=0,
                      whole: bool = False):
    """`(dx, dmat, d_log_a)` of `column_apply` from
    `_apply_grads_kernel`: in "tokens", `x` read from chunk `offset` and `do` from chunk
    `do_off`; `dx` over the grid's chunks, or with `whole` laid out as `x`, the chunks
    outside the grid's left unwritten."""
    blk = _Blocks(cfg, la, x)
    rp, dx = (x.shape[2], x.shape[-1]) if blk.tokens else x.shape[-2:]
    dy = mat.shape[-1]
    out_off, chunks = (offset, x.shape[1]) if whole else (0, None)
    kernel = functools.partial(_apply_grads_kernel, cfg=cfg, clock=clock)
    dxs, dmat, shares = call(
        cfg.backend, cfg.interpret, kernel, blk.grid,
        [blk.decay(), blk.seq(rp, dx, offset), blk.seq(rp, dy, do_off), blk.state(dx, dy)],
        [blk.seq(rp, dx, out_off), blk.state(dx, dy), blk.share()],
        [blk.seq_shape(rp, dx, x.dtype, chunks), jax.ShapeDtypeStruct(mat.shape, mat.dtype),
         _shares(blk.m, blk.grid[-1])])(la, x, do, mat)
    return dxs, dmat, shares.sum(axis=1)


def _outer_call(cfg: ColumnConfig, clock: str, x, y, la, out_dtype, x_off=0, y_off=0):
    """`[M, W, Dx, Dy]` sums in `out_dtype`; "columns" takes `x` transposed."""
    blk = _Blocks(cfg, la, x)
    xt, (rp, dy) = blk.x_tile(x), (y.shape[2], y.shape[-1])
    dx = xt[1] if blk.tokens else xt[0]
    kernel = functools.partial(_outer_kernel, cfg=cfg, clock=clock)
    return call(cfg.backend, cfg.interpret, kernel, blk.grid,
                [blk.decay(), blk.seq(*xt, x_off), blk.seq(rp, dy, y_off)],
                blk.state(dx, dy),
                jax.ShapeDtypeStruct((blk.m, blk.width, dx, dy), out_dtype))(la, x, y)


def _apply_call(cfg: ColumnConfig, clock: str, transpose: bool, x, mat, la, log_with=None,
                out_dtype=F32, x_off=0, log_off=0, out_to: tuple[int, int] | None = None):
    """`_apply_kernel` over every column; with `log_with` (an array laid out as the
    output, read from chunk `log_off` in "tokens") also `d log a` per row of M,
    `[M, 1, 1]`: `(out, d_log_a)`. The output covers the grid's chunks (in "tokens", from
    chunk 0 of its own array; `out_to=(chunks, offset)`: in an array of that many chunks,
    from `offset` on, the others left unwritten)."""
    blk = _Blocks(cfg, la, x)
    rp, dx = (x.shape[2], x.shape[-1]) if blk.tokens else x.shape[-2:]
    dy = mat.shape[-2] if transpose else mat.shape[-1]
    with_log = log_with is not None
    kernel = functools.partial(_apply_kernel, cfg=cfg, clock=clock, transpose=transpose,
                               with_log=with_log)
    inputs = [la, x, mat]
    in_specs = [blk.decay(), blk.seq(rp, dx, x_off), blk.state(*mat.shape[-2:])]
    chunks, out_off = out_to or (None, 0)
    out_specs = [blk.seq(rp, dy, out_off)]
    out_shape = [blk.seq_shape(rp, dy, out_dtype, chunks)]
    if with_log:
        inputs.append(log_with)
        in_specs.append(blk.seq(rp, dy, log_off))
        out_specs.append(blk.share())
        out_shape.append(_shares(blk.m, blk.grid[-1]))
    outs = call(cfg.backend, cfg.interpret, kernel, blk.grid, in_specs, out_specs,
                out_shape)(*inputs)
    return (outs[0], outs[1].sum(axis=1)) if with_log else outs[0]


def _shares(m: int, programs: int):
    return jax.ShapeDtypeStruct((m, programs, 1, 1), F32)


def _outer_grads_call(cfg: ColumnConfig, clock: str, x, y, ds, la, offset=0,
                      whole: bool = False):
    """`(dx, dy, d_log_a)` of `column_outer` from `_outer_grads_kernel` ("columns": `x`
    and `dx` transposed); "tokens" gradients cover the grid's chunks only, or with `whole`
    are laid out as `x` and `y`, the chunks outside the grid's left unwritten."""
    blk = _Blocks(cfg, la, x)
    xt, (rp, dy) = blk.x_tile(x), (y.shape[2], y.shape[-1])
    dx = xt[1] if blk.tokens else xt[0]
    # Read from `offset` ("tokens"), written over the grid's chunks (or where they lie).
    out_off, chunks = (offset, x.shape[1]) if whole else (0, None)
    ins = [blk.seq(*xt, offset), blk.seq(rp, dy, offset)]
    outs = [blk.seq(*xt, out_off), blk.seq(rp, dy, out_off)]
    shapes = [blk.seq_shape(*xt, x.dtype, chunks), blk.seq_shape(rp, dy, y.dtype, chunks)]
    kernel = functools.partial(_outer_grads_kernel, cfg=cfg, clock=clock)
    dxs, dys, shares = call(
        cfg.backend, cfg.interpret, kernel, blk.grid,
        [blk.decay(), *ins, blk.state(dx, dy)], [*outs, blk.share()],
        [*shapes, _shares(blk.m, blk.grid[-1])])(la, x, y, ds)
    return dxs, dys, shares.sum(axis=1)


def _fill_chunks(grad, total: int, offset: int):
    """A "tokens" gradient over the grid's chunks, as the gradient of the whole array it
    was read from (`total` chunks, read from `offset`): zeros elsewhere."""
    after = total - offset - grad.shape[1]
    if offset == 0 and after == 0:
        return grad
    return jnp.pad(grad, ((0, 0), (offset, after)) + ((0, 0),) * 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 5))
def column_outer(cfg: ColumnConfig, clock: str, x, y, la, offset: int = 0):
    """`S[m, c] = sum_r e_r x[m, c, r]^T y[m, c, r]` in `cfg.state_dtype` (accumulated in
    float32), `[M, W, Dx, Dy]`, `la [M, 1, 1]` (log a per row of M). "columns":
    `x [M, W, Dx, R']` (transposed), `y [M, W, R', Dy]`; "tokens": `x`, `y`
    `[B, N, R, W, H, D]` views of sequences, chunks `offset .. offset + N' - 1` summed,
    `N' = M / (B H)`."""
    return _outer_call(cfg, clock, x, y, la, cfg.state_dtype, offset, offset)


def _outer_fwd(cfg, clock, x, y, la, offset):
    return _outer_call(cfg, clock, x, y, la, cfg.state_dtype, offset, offset), (x, y, la)


def _outer_bwd(cfg, clock, offset, res, ds):
    x, y, la = res
    # d y_r = e_r x_r @ dS ; d x_r = e_r y_r @ dS^T.
    # d log a: sum_r tick_r <y_r, dy_r> (= e_r x_r dS y_r^T), summed in the kernels.
    if cfg.backend == "gpu":  # one kernel, one read of dS, no transposes around it
        dx, dy, dla = _outer_grads_call(cfg, clock, x, y, ds, la, offset)
        if cfg.layout == "tokens":
            dx = _fill_chunks(dx, x.shape[1], offset)
            dy = _fill_chunks(dy, y.shape[1], offset)
        return dx, dy, dla
    # TPU ("columns" only): two reads. The fused kernel compiles for Mosaic, but its
    # gradients in `[D, R']` put a chunk's rows on the 128-lane axis: compiled for a
    # v5e-8, the peak at T = 16384, D = 64 rose from 4.16 to 6.34 GiB (benchmarks/tpu_aot.py).
    dy, dla = _apply_call(cfg, clock, False, x.swapaxes(-1, -2), ds, la, log_with=y,
                          out_dtype=y.dtype)
    dx = _apply_call(cfg, clock, True, y, ds, la, out_dtype=x.dtype)
    return dx.swapaxes(-1, -2), dy, dla


column_outer.defvjp(_outer_fwd, _outer_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 5))
def column_apply(cfg: ColumnConfig, clock: str, x, mat, la, offset: int = 0):
    """`o[m, c, r] = e_r x[m, c, r] @ mat[m, c]`, float32:
    `mat [M, W, Dx, Dy]` (states, float32 or 16-bit), `la [M, 1, 1]`. "columns":
    `x [M, W, R', Dx]`, `o [M, W, R', Dy]`; "tokens": `x [B, N, R, W, H, Dx]` read from
    chunk `offset` on, `o [B, N', R, W, H, Dy]` (`N' = M / (B H)` chunks)."""
    return _apply_call(cfg, clock, False, x, mat, la, x_off=offset)


def _apply_fwd(cfg, clock, x, mat, la, offset):
    return _apply_call(cfg, clock, False, x, mat, la, x_off=offset), (x, mat, la)


def _apply_bwd(cfg, clock, offset, res, do):
    x, mat, la = res
    do_in = do.astype(x.dtype)  # the products run in the input dtype
    tokens = cfg.layout == "tokens"
    if cfg.backend == "gpu":  # one kernel: x, do and each state read once
        dx, dmat, dla = _apply_grads_call(cfg, clock, x, do_in, mat, la, offset)
        return (_fill_chunks(dx, x.shape[1], offset) if tokens else dx), dmat, dla
    # TPU ("columns" only, `_Blocks`). dx_r = e_r do_r @ mat^T (the transposed product of
    # the same kernel).
    dx, dla = _apply_call(cfg, clock, True, do_in, mat, la, log_with=x,
                          out_dtype=x.dtype, log_off=offset)
    # d mat = sum_r e_r x_r^T do_r: a column_outer over the rows, written in the state's
    # dtype (a state's cotangent is stored as the state is).
    dmat = _outer_call(cfg, clock, x.swapaxes(-1, -2), do_in, la, mat.dtype)
    return dx, dmat, dla


column_apply.defvjp(_apply_fwd, _apply_bwd)
