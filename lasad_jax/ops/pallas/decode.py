"""Fused Pallas decoding step of the `lasad` variant: one kernel per token and layer.

Why: a `lasad` decoding step (`ops.decode.lasad_step`) is a handful of tiny XLA ops on
`Dk x Dv` matrices (the key-value product, the prefix/image split, the column update, the
column read, the row state, the read-out). On an accelerator each is a kernel launch and
a round trip of a few KiB through HBM, for a few thousand flops, so at sampling batch
sizes a step was expected to be bound by launches rather than bytes or flops. The H200
said otherwise (Status below): the fused step saves nothing measurable, because the time
goes to moving the whole grid state, which neither step should do.
Here everything a token does happens in one `pallas_call` over `(batch, heads)` programs:
read `q, k, v`, the prefix and row states and the current column's two states
`grid[b, h, col]`; write `o`, the prefix and row states and `grid[b, h, col, 0]`, in
place (`input_output_aliases`), so a step moves `O(Dk Dv)` bytes per program and never
the whole grid.

The row start (once per grid row: decay every column by `a`, smooth across columns) stays
the XLA code of `ops.decode.start_row`: it is `O(w Dk Dv)` work with a `w x w` matmul,
already one fused op, and a kernel would not beat XLA's matmul.

Backends (same kernel body, different ways to reach one column of the grid):
* TPU (Mosaic): the column index is a scalar-prefetch argument and the grid's `BlockSpec`
  index map uses it, so only that column's `2 x Dk x Dv` block is copied to VMEM and back.
* GPU (Triton): the grid stays a whole array in HBM (no block) and the program indexes
  its column with the scalar, which Triton turns into a pointer offset. Triton's arrays
  are powers of two, so `Dk` and `Dv` must be.

Scalars reach the kernel as numbers, not booleans: `gate = [is_prefix, row_keep * b_h...]`
(float32), multiplied in. That is exact for finite inputs; a non-finite key or value in a
prefix slot would give NaN where the XLA step's `where` gives 0 (irrelevant for sampling).

Status: exact against the XLA step in the Pallas interpreter on CPU, both backends
(tests/ops/test_pallas_decode.py), and lowered for TPU (Mosaic) and CUDA (Triton IR). Timed on
an H200 (2026-12-04, `benchmarks/decode_step.py --impls xla pallas`, 16 heads, D = 64):
it decodes the same tokens as the XLA step (within 2e-7) and is no faster, 4 us slower per
token at batch 1 (32.0 against 28.1 us at width 16) and within 0.5% at batch 8 and 64, so
`ops.api.DECODE_AUTO_TABLE` keeps the XLA step. Both spend their time elsewhere: at batch
8 and 64 the time per token grows with the whole state (3.2 ms for a 2 GiB state), so the
XLA row start, or the scan around it, moves the whole grid every token on GPU, which the
in-place update avoids on CPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plt

from lasad_jax.ops import decode

F32 = jnp.float32


def _update(gate_ref, q, k, v, prefix, g0, g1, row, head):
    """The token's arithmetic on loaded float32 arrays: `q, k: [Dk, 1]`, `v: [1, Dv]`,
    states `[Dk, Dv]`. Returns `(o [1, Dv], prefix, g0, row)`."""
    is_prefix = gate_ref[0]
    row_mul = gate_ref[1 + head]  # b_h, or 0 at the first column of a row
    kv = k * v
    kv_prefix = kv * is_prefix
    kv_image = kv * (1.0 - is_prefix)
    prefix = prefix + kv_prefix
    g0 = g0 + kv_image
    row = row * row_mul + kv_image
    o = jnp.sum(q * (prefix + g1 + row), axis=0, keepdims=True)
    return o, prefix, g0, row


def _tpu_kernel(col_ref, gate_ref, q_ref, k_ref, v_ref, p_ref, g_ref, r_ref,
                o_out, p_out, g_out, r_out):
    del col_ref  # used by the index maps only
    o, prefix, g0, row = _update(
        gate_ref, q_ref[...].astype(F32), k_ref[...].astype(F32), v_ref[...].astype(F32),
        p_ref[...].astype(F32), g_ref[0].astype(F32), g_ref[1].astype(F32),
        r_ref[...].astype(F32), pl.program_id(1))
    o_out[...] = o.astype(o_out.dtype)
    p_out[...] = prefix.astype(p_out.dtype)
    g_out[0] = g0.astype(g_out.dtype)
    g_out[1] = g_ref[1]  # the block is written back whole
    r_out[...] = row.astype(r_out.dtype)


def _gpu_kernel(col_ref, gate_ref, q_ref, k_ref, v_ref, p_ref, g_ref, r_ref,
                o_out, p_out, g_out, r_out):
    b, h, col = pl.program_id(0), pl.program_id(1), col_ref[0]
    o, prefix, g0, row = _update(
        gate_ref, q_ref[...].astype(F32), k_ref[...].astype(F32), v_ref[...].astype(F32),
        p_ref[...].astype(F32), g_ref[b, h, col, 0].astype(F32),
        g_ref[b, h, col, 1].astype(F32), r_ref[...].astype(F32), h)
    o_out[...] = o.astype(o_out.dtype)
    p_out[...] = prefix.astype(p_out.dtype)
    g_out[b, h, col, 0] = g0.astype(g_out.dtype)  # the one write to the grid
    r_out[...] = row.astype(r_out.dtype)


def _call(col, gate, q, k, v, prefix, grid, row, *, backend: str, interpret: bool):
    """The kernel on `q, k: [B, H, Dk, 1]`, `v: [B, H, 1, Dv]`, states as in `LasadState`;
    `col: [1]` int32, `gate: [1 + H]` float32. Returns `(o [B, H, 1, Dv], prefix, grid, row)`
    with the three states aliased to their inputs."""
    b, h, dk, dv = prefix.shape
    out_shape = [jax.ShapeDtypeStruct((b, h, 1, dv), q.dtype),
                 jax.ShapeDtypeStruct(prefix.shape, prefix.dtype),
                 jax.ShapeDtypeStruct(grid.shape, grid.dtype),
                 jax.ShapeDtypeStruct(row.shape, row.dtype)]
    aliases = {5: 1, 6: 2, 7: 3}  # prefix, grid, row (inputs counted with col and gate)
    if backend == "tpu":
        def spec(*shape):
            return pl.BlockSpec((None, None, *shape), lambda i, j, c: (i, j) + (0,) * len(shape))

        column = pl.BlockSpec((None, None, None, 2, dk, dv), lambda i, j, c: (i, j, c[0], 0, 0, 0))
        mat = spec(dk, dv)
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, h),
            in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), spec(dk, 1), spec(dk, 1),
                      spec(1, dv), mat, column, mat],
            out_specs=[spec(1, dv), mat, column, mat])
        return pl.pallas_call(
            _tpu_kernel, grid_spec=grid_spec, out_shape=out_shape,
            input_output_aliases=aliases,
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
            interpret=pltpu.InterpretParams() if interpret else False,
        )(col, gate, q, k, v, prefix, grid, row)

    def spec(*shape):
        return pl.BlockSpec((None, None, *shape), lambda i, j: (i, j) + (0,) * len(shape))

    whole, mat = pl.BlockSpec(), spec(dk, dv)
    return pl.pallas_call(
        _gpu_kernel, grid=(b, h), out_shape=out_shape, input_output_aliases=aliases,
        in_specs=[whole, whole, spec(dk, 1), spec(dk, 1), spec(1, dv), mat, whole, mat],
        out_specs=[spec(1, dv), mat, whole, mat],
        # Triton params select the Triton lowering (the default GPU lowering is Mosaic GPU).
        # One Dk x Dv tile per program: a few warps, nothing to pipeline.
        compiler_params=plt.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
    )(col, gate, q, k, v, prefix, grid, row)


def check_gpu_shapes(dk: int, dv: int) -> None:
    """Triton arrays are powers of two: the GPU kernel takes `Dk`, `Dv` that are."""
    for name, n in (("Dk", dk), ("Dv", dv)):
        if n & (n - 1):
            raise ValueError(f"the fused GPU decoding step needs a power-of-two {name}, got "
                             f"{n}; use impl='xla' (or 'auto') for this head size")


def lasad_step_fused(state: decode.LasadState, q: jax.Array, k: jax.Array, v: jax.Array, *,
                     log_row: jax.Array, log_col: jax.Array, num_prefix: int,
                     backend: str, interpret: bool = False):
    """`ops.decode.lasad_step` with the per-token work in one Pallas kernel; same contract:
    `q, k: [B, H, Dk]`, `v: [B, H, Dv]`, returns `(o [B, H, Dv] in q's dtype, new_state)`.
    `backend`: "tpu" or "gpu"; `interpret=True` runs the kernel in the Pallas interpreter."""
    b, h, dk = q.shape
    dv = v.shape[-1]
    if backend == "gpu" and not interpret:  # the interpreter takes any shape
        check_gpu_shapes(dk, dv)
    width = state.grid.shape[2]
    in_prefix = state.pos < num_prefix
    col = jnp.maximum(state.pos - num_prefix, 0) % width
    grid = decode.start_row(state.grid, col, log_row, log_col)
    keep = jnp.where(col == 0, 0.0, 1.0)
    gate = jnp.concatenate([in_prefix.astype(F32)[None], keep * jnp.exp(log_col).astype(F32)])
    o, prefix, grid, row = _call(
        col.astype(jnp.int32)[None], gate, q.reshape(b, h, dk, 1), k.reshape(b, h, dk, 1),
        v.reshape(b, h, 1, dv), state.prefix, grid, state.row, backend=backend,
        interpret=interpret)
    new = decode.replace(state, pos=state.pos + 1, prefix=prefix, grid=grid, row=row)
    return o.reshape(b, h, dv).astype(q.dtype), new
