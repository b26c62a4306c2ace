"""Recurrent decoding: one slot at a time with a constant-size state, no KV cache.

Slots come in the order of the parallel form (prefix slots, then image tokens in raster
order). Each state records its own position `pos` (a scalar shared by the batch), so a
step knows whether it is in the prefix, and which row and column it is at, without being
told. Steps are pure functions of `(state, q, k, v)`: they work under `jax.jit` and as the
body of `jax.lax.scan`. States are float32 whatever the input dtype; the output has q's
dtype.

State per batch element and head (`D = Dk x Dv` matrices):

| variant     | fields                                  | size           |
|-------------|-----------------------------------------|----------------|
| `lasad`     | prefix, grid (2 per column), row        | `(2 w + 2) D`  |
| `lasad_row` | prefix, above, row_sum, row             | `4 D`          |
| `linear_1d` | prefix, run                             | `2 D`          |
| `linear`    | prefix, run                             | `2 D`          |

The `prefix` state is kept apart from the decayed ones because prefix slots are never
decayed (DESIGN.md §1). A step touches `O(D)` memory, except the `lasad` row start, which
rewrites the whole grid once per row. Steps are branch-free except that row start:
prefix slots simply add a zero key-value product to the image states. The row start is a
`lax.cond` on the single `grid` array, updated in place before it is read; with several
state arrays in the branch, or a read before the in-place update, XLA copies the whole
grid at every step (an earlier version of this file did, and was 30x slower per token
at w = 128 on CPU; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lasad_jax.ops.decay import smooth_columns


def _state(*meta: str):
    """Frozen dataclass registered as a pytree; `meta` fields are static (not traced)."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        data = [f.name for f in dataclasses.fields(cls) if f.name not in meta]
        return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=list(meta))

    return wrap


@_state()
class LasadState:
    """`grid[:, :, c, 0]` = earlier rows decayed to the current row, plus this row's keys so
    far (column c); `grid[:, :, c, 1]` = the cross-column smoothing `T_b` of the earlier-rows
    part, frozen for the current row; `row` = this row's keys decayed along the row."""

    pos: jax.Array  # int32 scalar: slots consumed so far
    prefix: jax.Array  # [B, H, Dk, Dv]
    grid: jax.Array  # [B, H, w, 2, Dk, Dv]
    row: jax.Array  # [B, H, Dk, Dv]


@_state("width")
class LasadRowState:
    pos: jax.Array
    prefix: jax.Array  # [B, H, Dk, Dv]
    above: jax.Array  # earlier rows decayed to the current row
    row_sum: jax.Array  # this row's keys, undecayed (they join `above` at the next row)
    row: jax.Array  # this row's keys decayed along the row
    width: int  # grid width (static)


@_state()
class LinearState:
    pos: jax.Array
    prefix: jax.Array  # [B, H, Dk, Dv]
    run: jax.Array  # image keys decayed in raster order


replace = dataclasses.replace


def lasad_init(batch: int, heads: int, dk: int, dv: int, width: int, dtype=jnp.float32) -> LasadState:
    mat = (batch, heads, dk, dv)
    return LasadState(jnp.zeros((), jnp.int32), jnp.zeros(mat, dtype),
                      jnp.zeros((batch, heads, width, 2, dk, dv), dtype), jnp.zeros(mat, dtype))


def linear_init(batch: int, heads: int, dk: int, dv: int, dtype=jnp.float32) -> LinearState:
    mat = (batch, heads, dk, dv)
    return LinearState(jnp.zeros((), jnp.int32), jnp.zeros(mat, dtype), jnp.zeros(mat, dtype))


def lasad_row_init(batch: int, heads: int, dk: int, dv: int, width: int, dtype=jnp.float32):
    mat = (batch, heads, dk, dv)
    zeros = [jnp.zeros(mat, dtype) for _ in range(4)]
    return LasadRowState(jnp.zeros((), jnp.int32), *zeros, width=width)


def _split(state, q, k, v, num_prefix: int):
    """The slot's key-value product for the prefix state and for the image states (the
    other one is zero), the new prefix state, and the image position (0 in the prefix)."""
    kv = jnp.einsum("bhd,bhe->bhde", k.astype(jnp.float32), v.astype(jnp.float32))
    in_prefix = state.pos < num_prefix
    zero = jnp.zeros_like(kv)
    prefix = state.prefix + jnp.where(in_prefix, kv, zero).astype(state.prefix.dtype)
    return jnp.where(in_prefix, zero, kv), prefix, jnp.maximum(state.pos - num_prefix, 0)


def _read(q: jax.Array, state: jax.Array) -> jax.Array:
    return jnp.einsum("bhd,bhde->bhe", q.astype(jnp.float32), state.astype(jnp.float32))


def _decays(log_row, log_col):
    return (jnp.exp(log_row)[None, :, None, None], jnp.exp(log_col)[None, :, None, None])


def start_row(grid: jax.Array, col: jax.Array, log_row, log_col) -> jax.Array:
    """The grid of column states at a row start (`col == 0`), unchanged elsewhere.

    `grid[..., 0]` holds `A_{r-1} + KV(row r-1)`; decaying it by `a` gives `A_r`, and
    slot 1 gets its cross-column smoothing `T_b A_r`, frozen for the row. Prefix slots see
    `col == 0` as well; the grid is still all zeros then, so this is a no-op for them.
    Shared by the XLA step below and the fused Pallas step (`ops.pallas.decode`).
    """
    a = jnp.exp(log_row)[None, :, None, None, None]

    def new_row(grid):
        cols = a * grid[:, :, :, 0]
        return jnp.stack([cols, smooth_columns(cols, log_col)], axis=3).astype(grid.dtype)

    return jax.lax.cond(col == 0, new_row, lambda g: g, grid)


def lasad_step(state: LasadState, q, k, v, *, log_row, log_col, num_prefix: int):
    _, b = _decays(log_row, log_col)
    kv, prefix, p = _split(state, q, k, v, num_prefix)
    col = p % state.grid.shape[2]
    grid = start_row(state.grid, col, log_row, log_col)
    grid = grid.at[:, :, col, 0].add(kv.astype(grid.dtype))
    above = jax.lax.dynamic_index_in_dim(grid, col, axis=2, keepdims=False)[:, :, 1]
    row = (jnp.where(col == 0, 0.0, b * state.row) + kv).astype(state.row.dtype)
    o = _read(q, prefix + above + row)
    return o.astype(q.dtype), replace(state, pos=state.pos + 1, prefix=prefix, grid=grid, row=row)


def lasad_row_step(state: LasadRowState, q, k, v, *, log_row, log_col, num_prefix: int):
    a, b = _decays(log_row, log_col)
    kv, prefix, p = _split(state, q, k, v, num_prefix)
    start = p % state.width == 0
    # At a row start the finished row joins the rows above, decayed by one row.
    above = jnp.where(start, a * (state.above + state.row_sum), state.above)
    row_sum = jnp.where(start, 0.0, state.row_sum) + kv
    row = jnp.where(start, 0.0, b * state.row) + kv
    o = _read(q, prefix + above + row)
    dt = state.row.dtype
    new = replace(state, pos=state.pos + 1, prefix=prefix, above=above.astype(dt),
                  row_sum=row_sum.astype(dt), row=row.astype(dt))
    return o.astype(q.dtype), new


def linear_step(state: LinearState, q, k, v, *, log_decay, num_prefix: int):
    lam = jnp.exp(log_decay)[None, :, None, None]
    kv, prefix, _ = _split(state, q, k, v, num_prefix)
    run = (lam * state.run + kv).astype(state.run.dtype)
    o = _read(q, prefix + run)
    return o.astype(q.dtype), replace(state, pos=state.pos + 1, prefix=prefix, run=run)
