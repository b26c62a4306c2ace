"""Recurrent decoding: one slot at a time with a constant-size state, no KV cache.

Slots come in the order of the parallel form (prefix slots, then image tokens in raster
order). Each state records its own position `pos` (a scalar shared by the batch), so a
step knows whether it is in the prefix, and which row and column it is at, without being
told. Steps are pure functions of `(state, q, k, v)`: they work under `jax.jit` and as the
body of `jax.lax.scan`. States are float32 whatever the input dtype; the output has q's
dtype.

State per batch element and head (`D = Dk x Dv` matrices):

| variant     | fields                                            | size           |
|-------------|---------------------------------------------------|----------------|
| `lasad`     | prefix, cols (w), smoothed (w), row               | `(2 w + 2) D`  |
| `lasad_row` | prefix, above, row_sum, row                       | `4 D`          |
| `linear_1d` | prefix, run                                       | `2 D`          |
| `linear`    | prefix, run                                       | `2 D`          |

The `prefix` state is kept apart from the decayed ones because prefix slots are never
decayed (DESIGN.md §1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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
    """`cols[c]` = earlier rows decayed to the current row, plus this row's keys so far;
    `smoothed` = `T_b` applied to the earlier-rows part, frozen for the current row;
    `row` = this row's keys decayed along the row."""

    pos: jax.Array  # int32 scalar: slots consumed so far
    prefix: jax.Array  # [B, H, Dk, Dv]
    cols: jax.Array  # [B, H, w, Dk, Dv]
    smoothed: jax.Array  # [B, H, w, Dk, Dv]
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
    grid = (batch, heads, width, dk, dv)
    return LasadState(jnp.zeros((), jnp.int32), jnp.zeros(mat, dtype), jnp.zeros(grid, dtype),
                      jnp.zeros(grid, dtype), jnp.zeros(mat, dtype))


def linear_init(batch: int, heads: int, dk: int, dv: int, dtype=jnp.float32) -> LinearState:
    mat = (batch, heads, dk, dv)
    return LinearState(jnp.zeros((), jnp.int32), jnp.zeros(mat, dtype), jnp.zeros(mat, dtype))


def _outer(k: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.einsum("bhd,bhe->bhde", k.astype(jnp.float32), v.astype(jnp.float32))


def _read(q: jax.Array, state: jax.Array) -> jax.Array:
    return jnp.einsum("bhd,bhde->bhe", q.astype(jnp.float32), state.astype(jnp.float32))


def _with_prefix(state, q, k, v, num_prefix: int, image_step: Callable):
    """Routes the slot to the prefix update or to `image_step` by the state's position."""
    kv = _outer(k, v)

    def prefix_step(st):
        new_prefix = st.prefix + kv.astype(st.prefix.dtype)
        return _read(q, new_prefix), replace(st, prefix=new_prefix, pos=st.pos + 1)

    def image(st):
        o, st = image_step(st, kv)
        return o, replace(st, pos=st.pos + 1)

    if num_prefix == 0:
        o, new = image(state)
    else:
        o, new = jax.lax.cond(state.pos < num_prefix, prefix_step, image, state)
    return o.astype(q.dtype), new


def lasad_step(state: LasadState, q, k, v, *, log_row, log_col, num_prefix: int):
    width = state.cols.shape[2]
    a = jnp.exp(log_row)[None, :, None, None]
    b = jnp.exp(log_col)[None, :, None, None]

    def new_row(st: LasadState) -> LasadState:
        # `cols` holds A_{r-1} + KV(row r-1); decaying it by `a` gives A_r.
        cols = (a[:, :, None] * st.cols).astype(st.cols.dtype)
        smoothed = smooth_columns(cols, log_col).astype(st.cols.dtype)
        return replace(st, cols=cols, smoothed=smoothed, row=jnp.zeros_like(st.row))

    def image_step(st: LasadState, kv):
        col = (st.pos - num_prefix) % width
        st = jax.lax.cond(col == 0, new_row, lambda s: s, st)
        row = (b * st.row + kv).astype(st.row.dtype)
        above = jax.lax.dynamic_index_in_dim(st.smoothed, col, axis=2, keepdims=False)
        o = _read(q, st.prefix + above + row)
        cols = st.cols.at[:, :, col].add(kv.astype(st.cols.dtype))
        return o, replace(st, row=row, cols=cols)

    return _with_prefix(state, q, k, v, num_prefix, image_step)


def lasad_row_init(batch: int, heads: int, dk: int, dv: int, width: int, dtype=jnp.float32):
    mat = (batch, heads, dk, dv)
    return LasadRowState(jnp.zeros((), jnp.int32), *(jnp.zeros(mat, dtype) for _ in range(4)), width=width)


def lasad_row_step(state: LasadRowState, q, k, v, *, log_row, log_col, num_prefix: int):
    a = jnp.exp(log_row)[None, :, None, None]
    b = jnp.exp(log_col)[None, :, None, None]

    def new_row(st: LasadRowState) -> LasadRowState:
        above = (a * (st.above + st.row_sum)).astype(st.above.dtype)
        zero = jnp.zeros_like(st.row)
        return replace(st, above=above, row_sum=zero, row=zero)

    def image_step(st: LasadRowState, kv):
        col = (st.pos - num_prefix) % st.width
        st = jax.lax.cond(col == 0, new_row, lambda s: s, st)
        row = (b * st.row + kv).astype(st.row.dtype)
        o = _read(q, st.prefix + st.above + row)
        return o, replace(st, row=row, row_sum=st.row_sum + kv.astype(st.row_sum.dtype))

    return _with_prefix(state, q, k, v, num_prefix, image_step)


def linear_step(state: LinearState, q, k, v, *, log_decay, num_prefix: int):
    lam = jnp.exp(log_decay)[None, :, None, None]

    def image_step(st: LinearState, kv):
        run = (lam * st.run + kv).astype(st.run.dtype)
        return _read(q, st.prefix + run), replace(st, run=run)

    return _with_prefix(state, q, k, v, num_prefix, image_step)
