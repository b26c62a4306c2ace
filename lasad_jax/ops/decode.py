"""Recurrent decoding: one slot at a time with a fixed-size state, no KV cache.

Slots come in the order of the parallel form (prefix slots, then image tokens in raster
order). Each state records its own position `pos` (an int32 scalar shared by the batch),
so a step knows whether it is in the prefix, and which row and column it is at, without
being told. Steps are pure functions of `(state, q, k, v)`: they run under `jax.jit` and
as the body of `jax.lax.scan`. States are float32 unless asked otherwise (the raw keys and
values of `lasad` may be kept in the input dtype, which loses nothing); the output has
q's dtype. docs/decoding.md explains the states and derives the `lasad` one.

State per batch element and head (`D = Dk x Dv` matrices, `w` the grid width, `P` the
prefix slots the `lasad` state has room for):

| variant     | arrays                                                      | numbers              |
|-------------|-------------------------------------------------------------|----------------------|
| `lasad`     | `cols` (a `D` per column); `keys`, `values` (`2w + P` rows) | `wD + (2w+P)(Dk+Dv)` |
| `lasad_row` | prefix, above, row_sum, row                                 | `4D`                 |
| `linear_1d` | prefix, run                                                 | `2D`                 |
| `linear`    | prefix, run                                                 | `2D`                 |

Rules every step keeps, because XLA copies a whole loop-carried array at every token
when they are broken (measured on GPU; jax-ml/jax issue 38145): no `lax.cond` or
`lax.switch` (prefix slots and row starts are selected by arithmetic on single-column
values); arrays with more than one column are updated by one `dynamic_update_slice` on
their leading axis, directly on the carried array (no reshape in between), and only
their updated version is read after the update. `lasad_jax.sampling.hlo_check` verifies
this on the compiled sampler.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _state(*meta: str):
    """Frozen dataclass registered as a pytree; `meta` fields are static (not traced)."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        data = [f.name for f in dataclasses.fields(cls) if f.name not in meta]
        return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=list(meta))

    return wrap


@_state()
class LasadState:
    """`cols[c]`: the smoothed state `H(c) = sum_c' b^|c - c'| A(c')` of the grid rows
    above, at the row where column `c` was last touched (one row behind until the token of
    column `c` brings it up to date). `keys`, `values`: raw keys and values, the grid row
    `r` in slots `(r % 2) * w + c` (the current and the previous row), prefix slot `j` in
    slot `2 w + j` (prefix slots are never decayed, and there are few: LASADGen has one)."""

    pos: jax.Array  # int32 scalar: slots consumed so far
    cols: jax.Array  # [w, B, H, Dk, Dv]
    keys: jax.Array  # [2 w + prefix_slots, B, H, Dk]
    values: jax.Array  # [2 w + prefix_slots, B, H, Dv]

    @property
    def dims(self) -> tuple[int, ...]:
        """(batch, heads, Dk, Dv)."""
        return tuple(self.cols.shape[1:])

    @property
    def prefix_slots(self) -> int:
        return self.keys.shape[0] - 2 * self.cols.shape[0]


@_state("width")
class LasadRowState:
    pos: jax.Array
    prefix: jax.Array  # [B, H, Dk, Dv]
    above: jax.Array  # earlier rows decayed to the current row
    row_sum: jax.Array  # this row's keys, undecayed (they join `above` at the next row)
    row: jax.Array  # this row's keys decayed along the row
    width: int  # grid width (static)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.prefix.shape)


@_state()
class LinearState:
    pos: jax.Array
    prefix: jax.Array  # [B, H, Dk, Dv]
    run: jax.Array  # image keys decayed in raster order

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.prefix.shape)


replace = dataclasses.replace


def lasad_init(batch: int, heads: int, dk: int, dv: int, width: int, dtype=F32, *,
               prefix_slots: int = 1, kv_dtype=None) -> LasadState:
    lead, slots = (batch, heads), 2 * width + prefix_slots
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    return LasadState(jnp.zeros((), jnp.int32), jnp.zeros((width, *lead, dk, dv), dtype),
                      jnp.zeros((slots, *lead, dk), kv_dtype),
                      jnp.zeros((slots, *lead, dv), kv_dtype))


def linear_init(batch: int, heads: int, dk: int, dv: int, dtype=F32) -> LinearState:
    mat = (batch, heads, dk, dv)
    return LinearState(jnp.zeros((), jnp.int32), jnp.zeros(mat, dtype), jnp.zeros(mat, dtype))


def lasad_row_init(batch: int, heads: int, dk: int, dv: int, width: int, dtype=F32):
    mat = (batch, heads, dk, dv)
    zeros = [jnp.zeros(mat, dtype) for _ in range(4)]
    return LasadRowState(jnp.zeros((), jnp.int32), *zeros, width=width)


def _outer(k: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.einsum("bhd,bhe->bhde", k.astype(F32), v.astype(F32))


def _split(state, q, k, v, num_prefix: int):
    """The slot's key-value product for the prefix state and for the image states (the
    other one is zero), the new prefix state, and the image position (0 in the prefix)."""
    kv = _outer(k, v)
    in_prefix = state.pos < num_prefix
    zero = jnp.zeros_like(kv)
    prefix = state.prefix + jnp.where(in_prefix, kv, zero).astype(state.prefix.dtype)
    return jnp.where(in_prefix, zero, kv), prefix, jnp.maximum(state.pos - num_prefix, 0)


def _read(q: jax.Array, state: jax.Array) -> jax.Array:
    return jnp.einsum("bhd,bhde->bhe", q.astype(F32), state.astype(F32))


def _decays(log_row, log_col):
    return (jnp.exp(log_row)[None, :, None, None], jnp.exp(log_col)[None, :, None, None])


def rms_normalize(o: jax.Array, eps: float | None) -> jax.Array:
    """`o / sqrt(mean(o^2) + eps)` over the last axis in float32 (`eps=None`: `o`)."""
    if eps is None:
        return o
    o = o.astype(F32)
    return o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + eps)


def xla_token_update(cols: jax.Array, keys: jax.Array, values: jax.Array, q: jax.Array,
                     k: jax.Array, v: jax.Array, log_row: jax.Array, log_col: jax.Array,
                     col: jax.Array, cur_row: jax.Array, slot: jax.Array, *,
                     norm_eps: float | None = None,
                     out_scale: jax.Array | None = None) -> tuple[jax.Array, ...]:
    """The `lasad` token at column `col` of the grid row in ring row `cur_row`, in XLA:
    writes its key and value into ring slot `slot` of `keys, values: [2w + P, B, H, D]`,
    brings `H(col)` of `cols: [w, B, H, Dk, Dv]` up to date with the previous grid row and
    returns `(cols, keys, values, o)`, `o: [B, H, Dv]` in q's dtype (docs/decoding.md,
    steps 2-4), RMS-normalized per head when `norm_eps` is given and then multiplied by
    `out_scale` when that is (both in float32, before the cast).
    `ops.pallas.decode.token_update` is the same contract as one fused kernel.

    Order matters to XLA: the state is updated first and only its updated version is read
    afterwards. The old version is read once, by the update itself; a second reader of the
    old buffer after the update forces a copy of the whole array at every token (XLA
    duplicates cheap producers into each consumer, so even using `new` for the read would
    add one; the read loads the column back instead). The ring likewise is written before
    it is read.
    """
    keys = jax.lax.dynamic_update_index_in_dim(keys, k.astype(keys.dtype), slot, 0)
    values = jax.lax.dynamic_update_index_in_dim(values, v.astype(values.dtype), slot, 0)
    w = cols.shape[0]
    cur = cur_row * w  # first ring slot of this row; the previous row starts at w - cur
    # Cross-column weights b^|c - c'|, and this row's causal part b^(c - c') for c' <= c.
    c = jnp.arange(w)
    across = jnp.exp(jnp.abs(c - col)[:, None] * log_col[None, :])  # [w, H]
    along = jnp.where((c <= col)[:, None], across, 0.0)

    k_prev = jax.lax.dynamic_slice_in_dim(keys, w - cur, w).astype(F32)
    v_prev = jax.lax.dynamic_slice_in_dim(values, w - cur, w).astype(F32)
    last_row = jnp.einsum("ch,cbhd,cbhe->bhde", across, k_prev, v_prev)
    a = jnp.exp(log_row)[None, :, None, None]
    old = jax.lax.dynamic_index_in_dim(cols, col, 0, keepdims=False).astype(F32)
    cols = jax.lax.dynamic_update_index_in_dim(
        cols, (a * (old + last_row)).astype(cols.dtype), col, 0)

    q32 = q.astype(F32)
    current = jax.lax.dynamic_index_in_dim(cols, col, 0, keepdims=False)
    k_row = jax.lax.dynamic_slice_in_dim(keys, cur, w).astype(F32)
    v_row = jax.lax.dynamic_slice_in_dim(values, cur, w).astype(F32)
    row = jnp.einsum("bhd,cbhd->cbh", q32, k_row) * along[:, None, :]
    prefix = jnp.einsum("bhd,jbhd->jbh", q32, keys[2 * w:].astype(F32))
    o = (_read(q32, current) + jnp.einsum("cbh,cbhe->bhe", row, v_row)
         + jnp.einsum("jbh,jbhe->bhe", prefix, values[2 * w:].astype(F32)))
    o = rms_normalize(o, norm_eps)
    o = o if out_scale is None else o * out_scale.astype(F32)
    return cols, keys, values, o.astype(q.dtype)


def lasad_step(state: LasadState, q, k, v, *, log_row, log_col, num_prefix: int,
               token_update=xla_token_update, norm_eps: float | None = None,
               out_scale: jax.Array | None = None):
    """One slot of `lasad`; docs/decoding.md derives it.

    Image token `(r, c)`: `H(c)` was last brought up to date at `(r - 1, c)`, so one
    update `H(c) <- a (H(c) + sum_c' b^|c - c'| k_{r-1,c'} v_{r-1,c'}^T)` (a `[Dk x w] @
    [w x Dv]` product over the previous row's keys and values) makes it current; then
    `o = q.H(c) + sum_{c' <= c} b^(c - c') (q.k_{r,c'}) v_{r,c'} + sum_j (q.k_j) v_j`, the
    last sum over the prefix slots. No case needs a branch: in the prefix (and in grid
    row 0) the previous-row slots and `H` are still zero, so the update writes zero into
    `H(0)` and only the prefix sum is non-zero. This function finds the token's place;
    `token_update` writes its key and value into the ring and does the rest
    (`xla_token_update`, or the fused kernel of `ops.pallas.decode`), RMS-normalizing `o`
    per head when `norm_eps` is given and scaling it by `out_scale` when that is.
    """
    w = state.cols.shape[0]
    in_prefix = state.pos < num_prefix
    p = jnp.maximum(state.pos - num_prefix, 0)
    col, cur_row = p % w, (p // w) % 2
    slot = jnp.where(in_prefix, 2 * w + state.pos, cur_row * w + col)
    cols, keys, values, o = token_update(state.cols, state.keys, state.values, q, k, v,
                                         log_row, log_col, col, cur_row, slot,
                                         norm_eps=norm_eps, out_scale=out_scale)
    return o, LasadState(state.pos + 1, cols, keys, values)


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
