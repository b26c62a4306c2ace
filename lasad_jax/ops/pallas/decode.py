"""The `lasad` decoding step as one fused GPU kernel (Triton).

Per token `(r, c)` at ring slot `s`, `ops.decode.lasad_step` writes the token's key and
value into the ring, brings one column state up to date and reads three things:

    U = sum_c' b^|c - c'| k_{r-1,c'} v_{r-1,c'}^T,   H(c) <- a (H(c) + U),
    o = q . H(c) + sum_{c' <= c} b^(c - c') (q . k_{r,c'}) v_{r,c'} + sum_j (q . k_j) v_j

for every (batch row, head). Compiled by XLA for an H200 (benchmarks/gpu_aot.py) the XLA
step is about a dozen kernels per layer: `U` is a matmul whose float32 result goes to
memory, the update reads the old column and `U` and writes the new column to a temporary
in another layout, a second kernel copies it into the state, the read loads it once
more, and the row and prefix terms and their sum are kernels of their own. Here one
program per (batch row, head) loads the old `Dk x Dv` state, the two grid rows of keys
and values and the prefix slots, forms `U` on chip, writes the new state in place (the
state buffer is aliased to the output), writes the token's key and value into the
aliased rings, and returns `o` in q's dtype, RMS-normalized per head and multiplied by
`out_scale` when asked (the mixer's head norm, its weight and the output gate). The
column is read once and written once, and a layer's step is two kernels: this one, and
the XLA kernel that forms q, k, v (feature map, RoPE) and packs them with the log decays
and the scale into the kernel's one input array; the output projection reads `o` as the
kernel wrote it.

`U` is a float32 product at full precision (`HIGHEST`: `2 w Dk Dv` multiply-adds per
program, nothing next to the memory traffic) and the weights `b^|c - c'|` are formed from
indices in the kernel, so it matches the XLA step to float32 rounding whatever the state
dtype, where that step's float32 einsums are float32 too: on CPU, or under
`jax_default_matmul_precision="highest"` (at the default a GPU may run them in TF32).
GPU only: the kernel indexes the state at the token's column inside the kernel (Triton
has no scalar prefetch, so the column is a runtime offset into the whole state); on CPU
it runs in Pallas' interpreter (tests). `ops.api.DECODE_AUTO_TABLE` chooses it
only where benchmarks/sampling.py has timed it faster than the XLA step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from lasad_jax.ops.decode import rms_normalize
from lasad_jax.ops.validation import fused_decode_head_problem

F32 = jnp.float32


def _pow2(n: int, least: int) -> int:
    """The power of two (at least `least`) that a Triton load of `n` slots takes."""
    return max(least, 1 << (n - 1).bit_length())


def token_kernel(at_ref, cols_ref, k_ref, v_ref, qkv_ref, new_ref, k_out, v_out, o_ref, *,
                 width: int, window: int, prefix_load: int, dk: int, dv: int,
                 norm_eps: float | None, scaled: bool):
    """One (batch row, head). `cols_ref`/`new_ref`: the whole aliased state
    `[w, B*H, Dk, Dv]`; `at_ref`: (column, first ring slot of the current grid row, the
    token's ring slot); `k_ref`, `v_ref` (aliased to `k_out`, `v_out`): this program's
    ring `[S, D]` (grid rows at slots 0 and w, prefix slots from 2w) before the token;
    `qkv_ref`: a float32 `[4 or 8, max(Dk, Dv)]` block holding the token's query, key and
    value in rows 0 to 2, its head's (log a, log b) at the start of row 3 and, when
    `scaled`, the output scale in row 4. With `norm_eps`, `o` is RMS-normalized over its
    features, then (`scaled`) multiplied by the scale, then written in `o_ref`'s dtype.

    Triton loads power-of-two blocks, so a grid row is read as `window >= w` slots that
    end inside the ring (shifted back from the row's start where they would run past
    it), and every slot's weight is zero unless it belongs to the row: no padding of the
    ring, which XLA would have to copy at every token. Every load takes the token's key
    and value from registers at its slot and the ring's old contents elsewhere, so the
    write of that slot (the kernel's last act) cannot race with the reads."""
    col, cur, slot = at_ref[0], at_ref[1], at_ref[2]
    at = (pl.ds(col, 1), pl.ds(pl.program_id(0), 1), slice(None), slice(None))
    log_a, log_b = qkv_ref[3:4, 0:1], qkv_ref[3:4, 1:2]  # [1, 1] each
    slots = k_ref.shape[0]
    q = qkv_ref[0:1, :dk]  # [1, Dk]
    k_new = qkv_ref[1:2, :dk].astype(k_out.dtype)
    v_new = qkv_ref[2:3, :dv].astype(v_out.dtype)

    def ring(start, size):
        """Ring slots `start .. start + size - 1` with the token's key and value at its
        slot: `[size, D]` each, float32."""
        index = lax.broadcasted_iota(jnp.int32, (size, 1), 0) + start
        rows = (pl.ds(start, size), slice(None))
        mine = index == slot
        return (jnp.where(mine, k_new, k_ref[rows]).astype(F32),
                jnp.where(mine, v_new, v_ref[rows]).astype(F32), index)

    def grid_row(start):
        """Keys, values `[window, D]` of the grid row from ring slot `start`, and each
        loaded slot's column `c'` (outside `[0, w)`: not in the row)."""
        load = jnp.minimum(start, slots - window)
        k, v, index = ring(load, window)
        return k, v, index - start

    def across(cols):  # b^|c - c'| for slots of the row, 0 elsewhere
        inside = (cols >= 0) & (cols < width)
        return jnp.where(inside, jnp.exp(jnp.abs(cols - col).astype(F32) * log_b), 0.0)

    # The column state, brought up to date with the previous grid row.
    k_prev, v_prev, cols = grid_row(width - cur)
    u = lax.dot_general(k_prev * across(cols), v_prev, (((0,), (0,)), ((), ())),
                        precision=lax.Precision.HIGHEST, preferred_element_type=F32)
    new = jnp.exp(log_a) * (cols_ref[at][0, 0].astype(F32) + u)  # [Dk, Dv]
    new_ref[at] = new[None, None].astype(new_ref.dtype)
    o = jnp.sum(q.reshape(-1, 1) * new, axis=0, keepdims=True)  # [1, Dv]
    # This grid row up to the token (c' <= c) ...
    k_row, v_row, cols = grid_row(cur)
    along = jnp.where(cols <= col, across(cols), 0.0)
    scores = jnp.sum(k_row * q, axis=1, keepdims=True) * along  # [window, 1]
    o += jnp.sum(scores * v_row, axis=0, keepdims=True)
    # ... and the prefix slots, weight 1 (slots not yet written hold zeros).
    k_pre, v_pre, index = ring(min(2 * width, slots - prefix_load), prefix_load)
    prefix = jnp.where(index >= 2 * width, jnp.sum(k_pre * q, axis=1, keepdims=True), 0.0)
    o += jnp.sum(prefix * v_pre, axis=0, keepdims=True)
    o = rms_normalize(o, norm_eps)  # the mixer's per-head norm, on chip
    if scaled:
        o *= qkv_ref[4:5, :dv]
    o_ref[...] = o.astype(o_ref.dtype)
    k_out[pl.ds(slot, 1), :] = k_new
    v_out[pl.ds(slot, 1), :] = v_new


def token_update(cols: jax.Array, keys: jax.Array, values: jax.Array, q: jax.Array,
                 k: jax.Array, v: jax.Array, log_row: jax.Array, log_col: jax.Array,
                 col: jax.Array, cur_row: jax.Array, slot: jax.Array, *,
                 norm_eps: float | None = None, out_scale: jax.Array | None = None,
                 interpret: bool = False) -> tuple[jax.Array, ...]:
    """`(cols with column col updated, keys, values with the token at slot, o)` for one
    `lasad` decoding token, `o: [B, H, Dv]` in q's dtype, RMS-normalized per head when
    `norm_eps` is given and then multiplied by `out_scale` (`[B, H, Dv]`) when that is.
    The same contract as `ops.decode.xla_token_update`.

    `cols: [w, B, H, Dk, Dv]` (updated in place when donated); `keys, values: [2w + P, B,
    H, D]` the ring before the token (grid row `r` in ring row `r % 2`, `cur_row`, slots
    `cur_row * w + c`; prefix slots from `2w`), also updated in place; `q, k: [B, H,
    Dk]`, `v: [B, H, Dv]`; `log_row, log_col: [H]`; `col`, `cur_row`, `slot`: int32
    scalars. The kernel takes the ring per (batch row, head), `[B*H, slots, D]`; inside
    the sampling loop XLA then keeps the carried ring in that layout, so no transpose
    runs per token (seen in the program compiled for an H200, benchmarks/gpu_aot.py).
    The token's query, key, value and its heads' log decays reach the kernel as one
    float32 array, so XLA computes them (RoPE, feature map, decays) in one kernel:
    separate operands took a kernel each, and writing the key and value into the ring in
    XLA two more (compiled for an H200). `out_scale` joins that array too (as an operand
    of its own it took a kernel to form, and `o` one more to cast). Float32 keeps the log
    decays exact and costs a few hundred bytes per (batch row, head).
    """
    w, b, h, dk, dv = cols.shape
    problem = None if interpret else fused_decode_head_problem(dk, dv)
    if problem:
        raise ValueError(f"impl='pallas' (the model's decode_impl) {problem}; use 'xla'")
    rows, window = b * h, _pow2(w, 16)
    ring_slots = keys.shape[0]
    prefix = ring_slots - 2 * w
    prefix_load = _pow2(max(prefix, 1), 1)
    # Zero slots only where the ring is shorter than one load (grids under ~8 columns).
    pad = max(0, window - (2 * w + prefix), prefix_load - prefix)

    def to_kernel(x: jax.Array) -> jax.Array:  # [2w + P, B, H, D] -> [B*H, 2w + P (+ pad), D]
        x = x.transpose(1, 2, 0, 3).reshape(rows, ring_slots, x.shape[-1])
        return jnp.pad(x, ((0, 0), (0, pad), (0, 0))) if pad else x

    def from_kernel(x: jax.Array) -> jax.Array:
        x = x[:, :ring_slots] if pad else x
        return x.reshape(b, h, ring_slots, x.shape[-1]).transpose(2, 0, 1, 3)

    at = jnp.stack([col, cur_row * w, slot]).astype(jnp.int32)
    state = cols.reshape(w, rows, dk, dv)  # a bitcast: (B, H) are adjacent
    whole = pl.BlockSpec(state.shape, lambda i: (0, 0, 0, 0))
    slots = ring_slots + pad

    def mine(*shape: int) -> pl.BlockSpec:
        return pl.BlockSpec((None, *shape), lambda i: (i,) + (0,) * len(shape))

    kr, vr = to_kernel(keys), to_kernel(values)
    # [B*H, 4 or 8, D] float32: q, k, v (k, v rounded to the ring's dtype, as stored),
    # (log a, log b) of each head and, when given, `out_scale`; zero rows fill the block
    # to a power of two (Triton blocks have power-of-two sides).
    d = max(dk, dv, 2)

    def row(x: jax.Array, stored=F32) -> jax.Array:
        x = x.astype(stored).astype(F32).reshape(rows, x.shape[-1])
        return jnp.pad(x, ((0, 0), (0, d - x.shape[-1]))) if x.shape[-1] < d else x

    logs = jnp.broadcast_to(jnp.stack([log_row, log_col], axis=-1), (b, h, 2))
    packed = [row(q), row(k, keys.dtype), row(v, values.dtype), row(logs)]
    scaled = out_scale is not None
    if scaled:
        packed += [row(out_scale)] + [jnp.zeros_like(packed[0])] * 3
    qkv = jnp.stack(packed, axis=1)
    new, kr, vr, o = pl.pallas_call(
        functools.partial(token_kernel, width=w, window=window, prefix_load=prefix_load,
                          dk=dk, dv=dv, norm_eps=norm_eps, scaled=scaled),
        grid=(rows,),
        in_specs=[pl.BlockSpec((3,), lambda i: (0,)), whole, mine(slots, dk), mine(slots, dv),
                  mine(len(packed), d)],
        out_specs=[whole, mine(slots, dk), mine(slots, dv), mine(1, dv)],
        out_shape=[jax.ShapeDtypeStruct(state.shape, state.dtype),
                   jax.ShapeDtypeStruct(kr.shape, kr.dtype),
                   jax.ShapeDtypeStruct(vr.shape, vr.dtype),
                   jax.ShapeDtypeStruct((rows, 1, dv), q.dtype)],
        input_output_aliases={1: 0, 2: 1, 3: 2},
        compiler_params=plt.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="lasad_decode_token",
    )(at, state, kr, vr, qkv)
    return new.reshape(cols.shape), from_kernel(kr), from_kernel(vr), o.reshape(b, h, dv)
