"""A decay of exactly 0 under `jax.jit`, where `check_decay` cannot refuse it.

Eager calls refuse 0 (tests/ops/test_validation.py), but a traced decay is not checked,
and `log 0 = -inf` made the distance-0 weight `0^0 = exp(0 * -inf)` NaN. Every form must
give the limit instead, as numpy's `0.0 ** 0 = 1` does: weight 1 at distance 0, 0 at any
other distance, with finite gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax import ops
from tests.ops.helpers import DK, DV, HEADS, PARALLEL, random_qkv, rel_err

WIDTH, ROWS, PREFIX = 3, 3, 1
# Head 0: no row decay, head 1: no column decay, head 2: neither.
ROW = np.array([0.0, 0.5, 0.0], np.float32)
COL = np.array([0.7, 0.0, 0.0], np.float32)
assert len(ROW) == HEADS


def numpy_mask(variant: str, t: int) -> np.ndarray:
    """`[H, T, T]` weights from powers in float64 (`0.0 ** 0 == 1`)."""
    a, b = ROW.astype(np.float64)[:, None, None], COL.astype(np.float64)[:, None, None]
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    pi, pj = i - PREFIX, j - PREFIX
    dr, dc = pi // WIDTH - pj // WIDTH, pi % WIDTH - pj % WIDTH
    if variant == "lasad":
        image = a ** np.maximum(dr, 0) * b ** np.abs(dc)
    elif variant == "lasad_row":
        image = np.where(dr == 0, b ** np.abs(dc), a ** np.maximum(dr, 0))
    else:  # linear_1d: its one decay is COL
        image = b ** np.maximum(i - j, 0)
    causal = j <= i
    return np.where(causal & (j < PREFIX), 1.0, np.where(causal & (j >= PREFIX), image, 0.0))


def numpy_attention(variant: str, q, k, v) -> np.ndarray:
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bihd,bjhd->bhij", q, k) * numpy_mask(variant, q.shape[1])[None]
    return np.einsum("bhij,bjhe->bihe", scores, v)


def _decays(variant: str, row, col) -> dict:
    return dict(decay=col) if variant == "linear_1d" else dict(width=WIDTH, row_decay=row,
                                                               col_decay=col)


@pytest.mark.parametrize("variant, impl", [
    ("lasad", "reference"), ("lasad", "chunked"),
    pytest.param("lasad", "pallas", marks=pytest.mark.slow),  # 10-18 s interpreted
    ("lasad_row", "reference"), ("lasad_row", "chunked"),
    ("linear_1d", "reference"), ("linear_1d", "chunked")])
def test_parallel_forms_under_jit(variant, impl):
    """Output against the numpy mask; the gradients of q, k, v and both decays finite.
    One grid row per chunk (three chunks), so the chunked and Pallas forms also pass
    states across chunks with a decay of 0."""
    q, k, v = random_qkv(0, batch=2, tokens=PREFIX + ROWS * WIDTH)
    chunk = WIDTH if variant != "linear_1d" else 4
    weights = jnp.cos(jnp.arange(DV, dtype=jnp.float32))

    def f(q, k, v, row, col):
        return PARALLEL[variant](q, k, v, num_prefix=PREFIX, impl=impl, chunk_size=chunk,
                                 **_decays(variant, row, col))

    def loss(*args):
        return jnp.sum(f(*args) * weights)

    fn = jax.jit(lambda *a: (f(*a), jax.grad(loss, argnums=range(5))(*a)))
    out, grads = fn(q, k, v, jnp.asarray(ROW), jnp.asarray(COL))
    assert rel_err(out, numpy_attention(variant, q, k, v)) < 1e-5
    for name, g in zip(("q", "k", "v", "row", "col"), grads):
        assert np.all(np.isfinite(np.asarray(g))), name


@pytest.mark.parametrize("variant, impl", [
    ("lasad", "xla"), ("lasad", "pallas"), ("lasad_row", None), ("linear_1d", None)])
def test_decoding_steps_under_jit(variant, impl):
    q, k, v = random_qkv(1, batch=2, tokens=PREFIX + ROWS * WIDTH)
    b = q.shape[0]
    if variant == "lasad":
        state = ops.lasad_decode_init(b, HEADS, DK, DV, WIDTH, prefix_slots=PREFIX)
        step, extra = ops.lasad_decode_step, dict(impl=impl)
    elif variant == "lasad_row":
        state = ops.lasad_row_decode_init(b, HEADS, DK, DV, WIDTH)
        step, extra = ops.lasad_row_decode_step, {}
    else:
        state = ops.linear_1d_decode_init(b, HEADS, DK, DV)
        step, extra = ops.linear_1d_decode_step, {}

    @jax.jit
    def run(q, k, v, row, col):  # the decays are traced: no eager check
        decays = _decays(variant, row, col)
        decays.pop("width", None)

        def body(s, x):
            o, s = step(s, *x, num_prefix=PREFIX, **decays, **extra)
            return s, o

        return jax.lax.scan(body, state, tuple(x.swapaxes(0, 1) for x in (q, k, v)))[1]

    out = run(q, k, v, jnp.asarray(ROW), jnp.asarray(COL)).swapaxes(0, 1)
    assert rel_err(out, numpy_attention(variant, q, k, v)) < 1e-5


def test_eager_calls_still_refuse_zero():
    q, k, v = random_qkv(2, batch=1, tokens=PREFIX + WIDTH)
    with pytest.raises(ValueError, match=r"row_decay values must lie in \(0, 1\]"):
        ops.lasad_attention(q, k, v, width=WIDTH, row_decay=ROW, col_decay=COL,
                            num_prefix=PREFIX)
