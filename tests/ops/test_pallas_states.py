"""The state pass kernel (`pallas.states.smooth_and_pass`) against a numpy recurrence.

Interpret mode on CPU, both backends: values and the gradients of the sums and of both
log decays (the kernel's own backward) against the recurrence `H_i = d H_{i-1} + T_b S_i`
written out in float64 numpy, with the gradients taken by central differences of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lasad_jax.ops.pallas import states
from tests.ops.helpers import rel_err

M = 3  # (batch * head) rows; their decays cover 1.0, a middle value and a sharp one
D_CHUNK = np.array([1.0, 0.6, 0.05])  # decay over one chunk, a^R
B_COL = np.array([0.3, 1.0, 0.85])  # column decay b


def _cfg(backend: str, features: int) -> states.PassConfig:
    return states.PassConfig(tile=states.feature_tile(backend, features), interpret=True,
                             backend=backend, precision=lax.Precision.HIGHEST)


def _numpy_pass(sums: np.ndarray, lk: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """The recurrence, one chunk at a time, in float64."""
    n, m, w, f = sums.shape
    c = np.arange(w)
    toe = np.exp(np.abs(c[:, None] - c[None])[None] * lb.reshape(m, 1, 1))  # [M, w, w]
    d = np.exp(lk.reshape(m, 1, 1))
    out, h = np.zeros_like(sums), np.zeros((m, w, f))
    for i in range(n):
        h = d * h + toe @ sums[i]
        out[i] = h
    return out


def _inputs(n: int, w: int, f: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sums = rng.normal(size=(n, M, w, f))
    return sums, np.log(D_CHUNK).reshape(M, 1, 1), np.log(B_COL).reshape(M, 1, 1)


@pytest.mark.parametrize("backend, n, w, f", [
    ("tpu", 3, 5, 24),  # a width no lowering likes; F whole (not a multiple of 128)
    ("tpu", 1, 8, 256),  # one chunk; two feature tiles
    ("gpu", 4, 16, 256),  # the GPU shapes: powers of two, eight feature tiles
])
def test_values_and_gradients_match_the_recurrence(backend, n, w, f):
    sums, lk, lb = _inputs(n, w, f)
    cfg = _cfg(backend, f)
    fn = jax.jit(lambda s, a, b: states.smooth_and_pass(cfg, s, a, b))
    args = tuple(jnp.asarray(x, jnp.float32) for x in (sums, lk, lb))
    out, pullback = jax.vjp(fn, *args)
    assert rel_err(out, _numpy_pass(sums, lk, lb)) < 1e-5

    ct = np.random.default_rng(1).normal(size=sums.shape)
    d_sums, d_lk, d_lb = pullback(jnp.asarray(ct, jnp.float32))

    def loss(s, a, b):
        return float(np.sum(_numpy_pass(s, a, b) * ct))

    # The loss is linear in the sums: its gradient is the transposed recurrence, which for
    # a symmetric T_b is the same recurrence run backwards in time.
    want_sums = _numpy_pass(ct[::-1], lk, lb)[::-1]
    assert rel_err(d_sums, want_sums) < 1e-5
    eps = 1e-6
    for got, arg in ((d_lk, 1), (d_lb, 2)):
        want = np.zeros((M, 1, 1))
        for row in range(M):
            plus = [sums, lk.copy(), lb.copy()]
            minus = [sums, lk.copy(), lb.copy()]
            plus[arg][row] += eps
            minus[arg][row] -= eps
            want[row] = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert rel_err(got, want) < 1e-5, (arg, np.ravel(got), np.ravel(want))


def test_padded_columns_do_not_reach_the_real_ones():
    """Zero sums in padded columns (the GPU layout pads the grid width to a power of two)
    leave the real columns' states as the unpadded width gives them."""
    sums, lk, lb = _inputs(3, 16, 256, seed=2)
    sums[:, :, 12:] = 0.0
    cfg = _cfg("gpu", 256)
    full = states.smooth_and_pass(cfg, jnp.asarray(sums, jnp.float32),
                                  jnp.asarray(lk, jnp.float32), jnp.asarray(lb, jnp.float32))
    want = _numpy_pass(sums[:, :, :12], lk, lb)
    assert rel_err(full[:, :, :12], want) < 1e-5


# ids: conftest skips off a GPU every test with "gpu" among its keywords, ids included.
@pytest.mark.parametrize("backend", ["tpu", "gpu"], ids=["mosaic", "triton"])
def test_bfloat16_storage_rounds_each_state_once(backend):
    """bf16 sums in, bf16 states out (`ops.pallas.chunked`, "State storage"): the walk
    stays float32, so each state is the float32 recurrence of the (bf16) sums rounded
    once, not a chain of roundings: each entry within a bf16 rounding (2^-9; 2^-8
    allowed) of the float64 recurrence. Rounding the running state at every chunk
    instead puts entries off by far more (measured: 11x their size). The backward
    writes bf16 `dS`, the float32 recurrence of the cotangent rounded once, and the decay
    gradients of the float32 kernel on the same inputs."""
    n, w, f = 6, 16, 256
    sums, lk, lb = _inputs(n, w, f, seed=3)
    sums16 = jnp.asarray(sums, jnp.bfloat16)
    exact_sums = np.asarray(sums16, np.float64)  # what the kernel sees
    cfg = _cfg(backend, f)
    logs = (jnp.asarray(lk, jnp.float32), jnp.asarray(lb, jnp.float32))
    out, pullback = jax.vjp(lambda s, a, b: states.smooth_and_pass(cfg, s, a, b), sums16, *logs)
    want = _numpy_pass(exact_sums, lk, lb)
    assert out.dtype == jnp.bfloat16
    per_entry = np.abs(np.asarray(out, np.float64) - want) / np.maximum(np.abs(want), 1e-3)
    assert per_entry.max() <= 2.0**-8, per_entry.max()  # one rounding, not n of them
    ct = jnp.asarray(np.random.default_rng(4).normal(size=sums.shape), jnp.bfloat16)
    d_sums, d_lk, d_lb = pullback(ct)
    assert d_sums.dtype == jnp.bfloat16
    want_sums = _numpy_pass(np.asarray(ct, np.float64)[::-1], lk, lb)[::-1]
    assert rel_err(d_sums, want_sums) < 2.0**-8
    _, pull32 = jax.vjp(lambda s, a, b: states.smooth_and_pass(cfg, s, a, b),
                        sums16.astype(jnp.float32), *logs)
    _, d_lk32, d_lb32 = pull32(ct.astype(jnp.float32))
    # Both decay gradients come from the sums and the cotangents alone (never from the
    # rounded states), so storage does not change them (the old `d log d`, which read the
    # stored states back, was 5.6e-4 off here).
    assert rel_err(d_lk, d_lk32) < 1e-5 and rel_err(d_lb, d_lb32) < 1e-5
