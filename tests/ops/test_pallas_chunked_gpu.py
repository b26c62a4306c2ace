"""The GPU (Triton) chunked `lasad` kernel: interpret mode on CPU against the reference, and
its lowering for CUDA on this CPU-only machine.

The GPU path lays the image on a padded grid (width, Dk, Dv to powers of two >= 16, zero
tokens at every row's end and after the last row); agreement with the quadratic reference
on the unpadded problem is the test that this padding is exact. Cases cover widths 3, 5, 6
(padded to 16) and 17 (to 32), partial last rows, T not a multiple of the chunk, 0 and 1
prefix slots, Dk != Dv (4 vs 6, conftest), decays of exactly 1.0 next to sharp ones, and
several chunks so the carried column states take part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.ops.helpers import (COL_DECAY, ROW_DECAY, lasad_reference_fn, random_qkv, rel_err,
                      triton_lowering, vjp_at)

from lasad_jax import ops
from lasad_jax.ops import pallas as pallas_ops
from lasad_jax.ops.pallas import chunked_gpu
from lasad_jax.ops.pallas.chunked import lasad_chunked_pallas

LOG_ROW = jnp.log(jnp.asarray(ROW_DECAY))
LOG_COL = jnp.log(jnp.asarray(COL_DECAY))
TOL = 1e-4
# bfloat16 inputs: kernel and reference both compute in float32 from the same bf16 inputs,
# so their outputs differ only by the final rounding to bf16 of two float32 values that
# agree to ~1e-7: at most one bf16 ulp, <= 2**-7 of the largest output. Measured over the
# three cases of the gradient test and three seeds each: <= 3.1e-3 (forward); the q, k, v
# gradients <= 8.7e-5; the float32 log-decay gradients <= 2.3e-6.
BF16_TOL = 2.0**-7

# (num_prefix, width, tokens, rows_per_chunk) -> padded width, rows per chunk, chunks
CASES = [
    (0, 5, 40, 4),  # w' = 16, 8 rows in 2 chunks of 4
    (1, 3, 1 + 50, 8),  # w' = 16, 17 rows (partial last), 4-row chunks: 5 chunks, 3 pad rows
    (1, 6, 1 + 37, 2),  # w' = 16, 7 rows (partial last), 4 chunks of 2 rows, 1 pad row
    (0, 17, 60, 1),  # w' = 32, one row per chunk, partial last row
]


def _pallas(width: int, num_prefix: int, rows: int, interpret: bool = True):
    def f(q, k, v, lr, lc):
        return lasad_chunked_pallas(q, k, v, width=width, num_prefix=num_prefix, log_row=lr,
                                    log_col=lc, rows_per_chunk=rows, interpret=interpret,
                                    backend="gpu")
    return f


@pytest.mark.parametrize("num_prefix, width, tokens, rows", CASES)
def test_forward_matcheslasad_reference_fn(num_prefix, width, tokens, rows):
    q, k, v = random_qkv(tokens, 2, tokens)
    args = (q, k, v, LOG_ROW, LOG_COL)
    out = jax.jit(_pallas(width, num_prefix, rows))(*args)
    assert out.shape == v.shape and out.dtype == jnp.float32
    assert rel_err(out, lasad_reference_fn(width, num_prefix)(*args)) < TOL


@pytest.mark.parametrize("num_prefix, width, tokens, rows", CASES[:3])
def test_gradients_matchlasad_reference_fn(num_prefix, width, tokens, rows):
    """Values and the five gradients (q, k, v, log a, log b) through the shared VJP."""
    q, k, v = random_qkv(100 + tokens, 2, tokens)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(tokens).normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_pallas(width, num_prefix, rows)), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert rel_err(out, ref) < TOL
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert np.all(np.isfinite(np.asarray(g))), name
        assert rel_err(g, r) < TOL, (name, rel_err(g, r))
    # The sharp decays must actually receive gradient (no silently zero path).
    assert np.all(np.abs(np.asarray(grads[3])[1:]) > 0)
    assert np.all(np.abs(np.asarray(grads[4])) > 0)


def test_several_value_blocks():
    """Dk = 20, Dv = 40 pad to 32 and 64: the forward runs 64 / BLOCK_DV programs per head
    along Dv, and the backward's runs swap the roles of Dk and Dv."""
    rng = np.random.default_rng(11)
    q, k = (jnp.asarray(rng.normal(size=(1, 1 + 26, 3, 20)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(1, 1 + 26, 3, 40)), jnp.float32)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(rng.normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_pallas(5, 1, 2)), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(5, 1), args, ct)
    assert rel_err(out, ref) < TOL
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert rel_err(g, r) < TOL, (name, rel_err(g, r))


def test_bfloat16_inputs():
    num_prefix, width, tokens, rows = CASES[2]
    q, k, v = random_qkv(7, 2, tokens, jnp.bfloat16)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(7).normal(size=v.shape), jnp.bfloat16)
    out, grads = vjp_at(jax.jit(_pallas(width, num_prefix, rows)), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert out.dtype == jnp.bfloat16 and rel_err(out, ref) < BF16_TOL
    for name, g, r in zip(("q", "k", "v"), grads[:3], ref_grads[:3]):
        assert g.dtype == jnp.bfloat16 and rel_err(g, r) < BF16_TOL, name
    for name, g, r in zip(("log_row", "log_col"), grads[3:], ref_grads[3:]):
        assert g.dtype == jnp.float32 and rel_err(g, r) < TOL, name


def test_layout_sizes_are_triton_ready():
    assert [chunked_gpu.padded(n) for n in (1, 3, 16, 17, 24, 64)] == [16, 16, 16, 32, 32, 64]
    # rows * padded width is a power of two, capped at CHUNK_TOKENS (or one row).
    assert chunked_gpu.rows_per_chunk(24) == chunked_gpu.CHUNK_TOKENS // 32
    assert chunked_gpu.rows_per_chunk(5, 3) == 2 and chunked_gpu.rows_per_chunk(200) == 1
    q = jnp.zeros((1, 64, 16))
    with pytest.raises(ValueError, match="power of two"):
        chunked_gpu.run(q, q, jnp.zeros((1, 64, 6)), jnp.zeros((2,)), 16, 2, True)
    with pytest.raises(ValueError, match="backend"):
        lasad_chunked_pallas(*random_qkv(0, 1, 8), width=4, num_prefix=0, log_row=LOG_ROW,
                             log_col=LOG_COL, rows_per_chunk=1, backend="cuda")


def test_lowers_to_triton_for_cuda(monkeypatch):
    """Forward and backward lower on a CPU-only machine at a realistic width (24 -> 32, the
    384 px grid) and head size. This checks the Pallas-to-Triton-IR lowering only: XLA's
    Triton compilation (Triton passes, register allocation, PTX) needs a GPU build."""
    q, k, v = (jnp.zeros((1, 1 + 24 * 5, 2, d), jnp.float32) for d in (64, 64, 64))
    f = _pallas(24, 1, 2, interpret=False)
    args = (q, k, v, LOG_ROW[:2], LOG_COL[:2])
    assert triton_lowering(f, args, monkeypatch) == 1
    grad = jax.grad(lambda *a: jnp.sum(f(*a)), argnums=range(5))
    assert triton_lowering(grad, args, monkeypatch) == 5  # fwd, dq, dk, dv, col moment


@pytest.mark.parametrize("image_tokens, kernel", [(20, "masked"), (45, "chunked")])
def test_gpu_dispatch_mirrors_tpu_rule(image_tokens, kernel, monkeypatch):
    """`impl="pallas"` on GPU: the masked kernel when the image fits in one chunk, the
    chunked GPU kernel otherwise; traced as if on a GPU and lowered for CUDA."""
    calls = []
    for name in ("lasad_masked_pallas", "lasad_chunked_pallas"):
        real = getattr(pallas_ops, name)

        def spy(*a, _real=real, _name=name, **kw):
            calls.append((_name, kw["backend"], kw["interpret"]))
            return _real(*a, **kw)

        monkeypatch.setattr(pallas_ops, name, spy)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q, k, v = random_qkv(0, 1, 1 + image_tokens)

    def f(q, k, v):
        return ops.lasad_attention(q, k, v, width=5, row_decay=jnp.asarray(ROW_DECAY),
                                   col_decay=jnp.asarray(COL_DECAY), num_prefix=1,
                                   impl="pallas", chunk_size=32)

    assert triton_lowering(f, (q, k, v), monkeypatch) == 1
    assert calls == [(f"lasad_{kernel}_pallas", "gpu", False)]
