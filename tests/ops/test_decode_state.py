"""The decoding states: sizes and layouts as documented (docs/decoding.md), exactness over
many grid rows (the two-row ring wraps around), and bfloat16 storage within its measured
error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax import ops
from tests.ops.helpers import (COL_DECAY, DK, DV, HEADS, PARALLEL, ROW_DECAY, decay_kwargs,
                              decode_all, random_qkv, rel_err)


def test_lasad_state_layout_and_size():
    b, w = 2, 7
    state = ops.lasad_decode_init(b, HEADS, DK, DV, w)
    # The axis a step updates leads, so one column or one ring slot is one contiguous block.
    assert state.cols.shape == (w, b, HEADS, DK, DV)
    assert state.keys.shape == (2 * w + 1, b, HEADS, DK)  # room for one prefix slot
    assert state.values.shape == (2 * w + 1, b, HEADS, DV)
    numbers = sum(x.size for x in jax.tree.leaves(state) if x.ndim)
    assert numbers == b * HEADS * (w * DK * DV + (2 * w + 1) * (DK + DV))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state) if x.ndim)
    small = ops.lasad_decode_init(b, HEADS, DK, DV, w, prefix_slots=3, kv_dtype=jnp.bfloat16)
    assert small.keys.shape[0] == 2 * w + 3 and small.keys.dtype == jnp.bfloat16
    assert small.cols.dtype == jnp.float32


@pytest.mark.parametrize("variant", ["lasad", "lasad_row"])
@pytest.mark.parametrize("width,rows,extra,num_prefix", [(3, 9, 2, 1), (4, 6, 0, 2), (1, 11, 0, 0)])
def test_many_rows_match_reference(variant, width, rows, extra, num_prefix):
    """Enough rows for the ring of two grid rows to be reused many times over."""
    q, k, v = random_qkv(width + rows, 2, num_prefix + rows * width + extra)
    rng = np.random.default_rng(width)
    row, col = rng.uniform(0.2, 1.0, HEADS), rng.uniform(0.2, 1.0, HEADS)
    kw = decay_kwargs(variant, width, row=row, col=col)
    ref = PARALLEL[variant](q, k, v, num_prefix=num_prefix, impl="reference", **kw)
    dec, final = decode_all(variant, q, k, v, width=width, num_prefix=num_prefix, row=row, col=col)
    assert rel_err(dec, ref) < 1e-5
    assert int(final.pos) == q.shape[1]


# bfloat16 storage of the states, float32 inputs and arithmetic: every stored state is
# rounded to 8 significand bits at each update. Measured here (8 x 8 grid, one prefix
# slot): 3.4e-3 of the largest output for lasad, 5.2e-3 lasad_row, 7.1e-3 linear,
# 1.1e-2 linear_1d; float32 states: 1e-7. Longer images: docs/decoding.md.
BF16_STATE_TOL = {"lasad": 2.0**-7, "lasad_row": 2.0**-6, "linear": 2.0**-6, "linear_1d": 2.0**-5}


@pytest.mark.parametrize("variant", list(PARALLEL))
def test_bfloat16_state_storage(variant):
    width, num_prefix = 8, 1
    q, k, v = random_qkv(3, 2, num_prefix + 8 * width + 3)
    ref = PARALLEL[variant](q, k, v, num_prefix=num_prefix, impl="reference",
                            **decay_kwargs(variant, width))
    b, _, h, dk = q.shape
    init = {"lasad": lambda: ops.lasad_decode_init(b, h, dk, DV, width, jnp.bfloat16,
                                                   prefix_slots=num_prefix),
            "lasad_row": lambda: ops.lasad_row_decode_init(b, h, dk, DV, width, jnp.bfloat16),
            "linear_1d": lambda: ops.linear_1d_decode_init(b, h, dk, DV, jnp.bfloat16),
            "linear": lambda: ops.linear_decode_init(b, h, dk, DV, jnp.bfloat16)}[variant]
    dec, final = decode_all(variant, q, k, v, width=width, num_prefix=num_prefix, state=init())
    assert {x.dtype for x in jax.tree.leaves(final) if x.ndim} == {jnp.dtype(jnp.bfloat16)}
    assert dec.dtype == jnp.float32
    err = rel_err(dec, ref)
    assert 2.0**-12 < err < BF16_STATE_TOL[variant]  # rounded (not float32), within the bound


def test_step_rejects_mismatched_inputs():
    state = ops.lasad_decode_init(2, HEADS, DK, DV, 4)
    q = jnp.zeros((2, HEADS, DK))
    with pytest.raises(ValueError, match=r"state's \[batch, heads, Dk, Dv\] = \(2, 3, 4, 6\)"):
        ops.lasad_decode_step(state, q, q, jnp.zeros((2, HEADS, DV + 1)),
                              row_decay=jnp.ones(HEADS), col_decay=jnp.ones(HEADS))
    with pytest.raises(ValueError, match="num_prefix=2 is more than the state has room for"):
        ops.lasad_decode_step(state, q, q, jnp.zeros((2, HEADS, DV)), num_prefix=2,
                              row_decay=jnp.ones(HEADS), col_decay=jnp.ones(HEADS))
    with pytest.raises(ValueError, match="col_decay values must lie in"):
        ops.lasad_decode_step(state, q, q, jnp.zeros((2, HEADS, DV)),
                              row_decay=jnp.ones(HEADS), col_decay=jnp.zeros(HEADS))


def test_bfloat16_keys_and_values_are_stored_exactly():
    """bf16 inputs: keys and values kept in bf16 give the same outputs as kept in float32."""
    q, k, v = random_qkv(5, 2, 1 + 5 * 4 + 2, dtype=jnp.bfloat16)
    row, col = jnp.asarray(ROW_DECAY), jnp.asarray(COL_DECAY)

    def run(kv_dtype):
        state = ops.lasad_decode_init(2, HEADS, DK, DV, 4, kv_dtype=kv_dtype)
        def step(s, x):
            return ops.lasad_decode_step(s, *x, row_decay=row, col_decay=col,
                                         num_prefix=1)[::-1]
        final, o = jax.lax.scan(step, state, tuple(x.swapaxes(0, 1) for x in (q, k, v)))
        return o, final

    o16, final = jax.jit(run, static_argnums=0)(jnp.bfloat16)
    o32, _ = jax.jit(run, static_argnums=0)(jnp.float32)
    assert final.keys.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(o16, np.float32), np.asarray(o32, np.float32))
