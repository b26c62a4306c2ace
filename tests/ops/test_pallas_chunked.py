"""The Pallas chunked `lasad` kernel, TPU runner (interpret mode), against the quadratic
reference. The GPU (Triton) runner has its own file, test_pallas_chunked_gpu.py.

Shapes are small so the Pallas interpreter stays fast, but each case spans several chunks
so the carried column states, the column smoothing and the padding all take part.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.ops.helpers import COL_DECAY, ROW_DECAY, random_qkv, rel_err

from lasad_jax.ops.pallas.chunked import lasad_chunked_pallas
from lasad_jax.ops.reference import masked_attention

LOG_ROW = jnp.log(jnp.asarray(ROW_DECAY))  # includes a decay of exactly 1.0
LOG_COL = jnp.log(jnp.asarray(COL_DECAY))

# (num_prefix, width, tokens, rows_per_chunk)
CASES = [
    (0, 4, 40, 3),  # 10 rows in chunks of 3: a partial last chunk
    (1, 5, 1 + 37, 3),  # width not a power of two, a partial last row
    (1, 5, 1 + 80, 4),  # exact chunks, with a prefix slot
    (0, 5, 23, 8),  # fewer rows than a chunk: one chunk, no carried state
]


def _pallas(q, k, v, log_row, log_col, *, width, num_prefix, rows):
    return lasad_chunked_pallas(q, k, v, width=width, num_prefix=num_prefix, log_row=log_row,
                                log_col=log_col, rows_per_chunk=rows, interpret=True)


def _reference(q, k, v, log_row, log_col, *, width, num_prefix):
    return masked_attention("lasad", q, k, v, width=width, num_prefix=num_prefix,
                            log_row=log_row, log_col=log_col)


@pytest.mark.parametrize("num_prefix,width,tokens,rows", CASES)
def test_forward_matches_reference(num_prefix, width, tokens, rows):
    q, k, v = random_qkv(0, 2, tokens)
    fn = jax.jit(lambda *a: _pallas(*a, width=width, num_prefix=num_prefix, rows=rows))
    out = fn(q, k, v, LOG_ROW, LOG_COL)
    ref = _reference(q, k, v, LOG_ROW, LOG_COL, width=width, num_prefix=num_prefix)
    assert out.shape == ref.shape and out.dtype == jnp.float32
    assert rel_err(out, ref) < 1e-4


def test_returns_input_dtype():
    q, k, v = random_qkv(1, 1, 20, dtype=jnp.bfloat16)
    out = _pallas(q, k, v, LOG_ROW, LOG_COL, width=4, num_prefix=0, rows=2)
    ref = _reference(q, k, v, LOG_ROW, LOG_COL, width=4, num_prefix=0)
    assert out.dtype == jnp.bfloat16
    assert rel_err(out.astype(jnp.float32), ref) < 1e-2  # bf16 rounding of the output


@pytest.mark.parametrize("num_prefix,width,tokens,rows", CASES[:2])
def test_gradients_match_reference(num_prefix, width, tokens, rows):
    q, k, v = random_qkv(2, 2, tokens)
    # A nonlinear readout so every output entry gets a different cotangent.
    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)) * jnp.arange(a[2].shape[-1]))

    got = jax.jit(jax.grad(
        loss(lambda *a: _pallas(*a, width=width, num_prefix=num_prefix, rows=rows)),
        argnums=range(5)))(q, k, v, LOG_ROW, LOG_COL)
    want = jax.grad(
        loss(lambda *a: _reference(*a, width=width, num_prefix=num_prefix)),
        argnums=range(5))(q, k, v, LOG_ROW, LOG_COL)
    for name, g, w in zip(("q", "k", "v", "log_row", "log_col"), got, want):
        assert np.all(np.isfinite(np.asarray(g))), name
        assert rel_err(g, w) < 1e-4, name


def test_lowers_for_tpu():
    """Forward and backward lower to Mosaic on this CPU machine (the docstring's claim), at
    the 384 px grid width and a real head size; not a compilation, which needs a TPU."""
    q = jnp.zeros((1, 1 + 24 * 8, 3, 64), jnp.float32)
    f = functools.partial(lasad_chunked_pallas, width=24, num_prefix=1, rows_per_chunk=4)
    grad = jax.grad(lambda *a: jnp.sum(f(*a[:3], log_row=a[3], log_col=a[4])), argnums=range(5))
    text = jax.jit(grad).trace(q, q, q, LOG_ROW, LOG_COL).lower(
        lowering_platforms=("tpu",)).as_text()
    assert text.count("custom_call @tpu_custom_call") == 5  # fwd, dq, dk, dv, col moment
