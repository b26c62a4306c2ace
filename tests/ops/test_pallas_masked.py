"""The masked Pallas kernel (forward and Pallas backward) against the quadratic reference.

Run on CPU in interpret mode: the TPU path through `pltpu.InterpretParams` (Mosaic's
simulator), the GPU path through the generic interpreter (which also exercises its
feature padding to Triton's power-of-two sizes). Shapes are small on purpose and chosen so
the awkward cases appear: a partial last grid row, T not a multiple of the block, a width
that is not a power of two, Dk != Dv (4 vs 6), 0 / 1 / all-prefix slots, and decays of
exactly 1.0 (log 0) next to sharp ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.ops.helpers import (COL_DECAY, ROW_DECAY, lasad_reference_fn, random_qkv, rel_err,
                      triton_lowering, vjp_at)
from lasad_jax.ops.pallas import lasad_masked_pallas

LOG_ROW = jnp.log(jnp.asarray(ROW_DECAY))
LOG_COL = jnp.log(jnp.asarray(COL_DECAY))
TOL = 1e-4
# bfloat16 inputs: the kernels accumulate in float32 like the reference, so the gap to the
# reference (on the same bf16 inputs) is the final rounding of the outputs / gradients to
# bfloat16, at most half an ulp = 2**-8 relative. Measured: <= 2.6e-3 (forward). On CPU the
# dots are exact; on a GPU their TF32 inputs (ops/pallas/precision.py) add <= 2**-11.
BF16_TOL = 2.0**-8
LOG_BF16_TOL = 1e-4  # the log-decay gradients stay float32

# (T, num_prefix, width, block_q, block_k)
CASES = [
    (23, 1, 5, 16, 16),  # 22 image tokens on width 5: partial last row; T % block != 0
    (70, 0, 8, 32, 16),  # no prefix, 70 tokens, mixed blocks, several diagonal blocks
    (40, 3, 6, 16, 32),  # key block larger than query block
    (6, 6, 4, 16, 16),  # prefix only: causal, undecayed
]


def _pallas(backend: str, width: int, num_prefix: int, bq: int, bk: int):
    def f(q, k, v, lr, lc):
        return lasad_masked_pallas(q, k, v, width=width, num_prefix=num_prefix, log_row=lr,
                                   log_col=lc, block_q=bq, block_k=bk, interpret=True,
                                   backend=backend)
    return f


@pytest.mark.parametrize("t, num_prefix, width, bq, bk", CASES)
def test_forward_tpu_interpret(t, num_prefix, width, bq, bk):
    q, k, v = random_qkv(t, 2, t)
    args = (q, k, v, LOG_ROW, LOG_COL)
    out = _pallas("tpu", width, num_prefix, bq, bk)(*args)
    assert out.shape == v.shape and out.dtype == jnp.float32
    assert rel_err(out, lasad_reference_fn(width, num_prefix)(*args)) < TOL


@pytest.mark.parametrize("backend, case", [("tpu", CASES[0]), ("tpu", CASES[1]),
                                           ("gpu", CASES[2])])
def test_gradients_matchlasad_reference_fn(backend, case):
    """Forward and the five gradients (q, k, v, log a, log b) from the Pallas backward."""
    t, num_prefix, width, bq, bk = case
    q, k, v = random_qkv(100 + t, 2, t)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(t).normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(_pallas(backend, width, num_prefix, bq, bk), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert rel_err(out, ref) < TOL
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert rel_err(g, r) < TOL, (name, rel_err(g, r))
    # The sharp decays must actually receive gradient (no silently zero path).
    assert np.all(np.abs(np.asarray(grads[3])[1:]) > 0)
    assert np.all(np.abs(np.asarray(grads[4])) > 0)


def test_bfloat16_inputs():
    t, num_prefix, width, bq, bk = 45, 1, 5, 16, 32
    q, k, v = random_qkv(7, 1, t, jnp.bfloat16)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(7).normal(size=v.shape), jnp.bfloat16)
    out, grads = vjp_at(_pallas("tpu", width, num_prefix, bq, bk), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < BF16_TOL
    for name, g, r in zip(("q", "k", "v"), grads[:3], ref_grads[:3]):
        assert g.dtype == jnp.bfloat16 and rel_err(g, r) < BF16_TOL, name
    for name, g, r in zip(("log_row", "log_col"), grads[3:], ref_grads[3:]):
        assert g.dtype == jnp.float32 and rel_err(g, r) < LOG_BF16_TOL, name


def test_gpu_path_forward_under_jit():
    """The Triton path pads features to 16 and blocks to powers of two; results must not
    change, and the call must trace under `jax.jit`."""
    t, num_prefix, width = 37, 1, 5
    q, k, v = random_qkv(3, 1, t)
    args = (q, k, v, LOG_ROW, LOG_COL)
    out = jax.jit(_pallas("gpu", width, num_prefix, 16, 32))(*args)
    assert rel_err(out, lasad_reference_fn(width, num_prefix)(*args)) < TOL


def test_decays_of_one_match_unit_mask():
    """With every decay 1.0 the op is plain causal linear attention."""
    t, width = 20, 5
    q, k, v = random_qkv(5, 1, t)
    zeros = jnp.zeros((3,), jnp.float32)
    out = _pallas("tpu", width, 2, 16, 16)(q, k, v, zeros, zeros)
    scores = jnp.einsum("bihd,bjhd->bhij", q, k) * jnp.tril(jnp.ones((t, t)))
    assert rel_err(out, jnp.einsum("bhij,bjhe->bihe", scores, v)) < TOL


@pytest.mark.parametrize("kwargs", [dict(backend="cuda"), dict(backend="gpu", block_q=24),
                                    dict(backend="tpu", block_k=12)])
def test_bad_kernel_options_raise(kwargs):
    q, k, v = random_qkv(0, 1, 8)
    with pytest.raises(ValueError):
        lasad_masked_pallas(q, k, v, width=4, num_prefix=0, log_row=LOG_ROW, log_col=LOG_COL,
                            interpret=True, **kwargs)


def test_gpu_precision_and_tiles_follow_the_input_dtype(monkeypatch):
    """float32 inputs: IEEE float32 dots on 32-token tiles; bfloat16 inputs: TF32 dots on
    64-token tiles (the H200 timings in `masked.default_block`). Read off the Triton IR."""
    texts = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        q = jnp.zeros((1, 256, 2, 16), dtype)
        f = lambda q, k, v: lasad_masked_pallas(q, k, v, width=16, num_prefix=0,
                                                log_row=LOG_ROW[:2], log_col=LOG_COL[:2],
                                                backend="gpu")
        texts[dtype] = []
        assert triton_lowering(f, (q, q, q), monkeypatch, texts[dtype]) == 1
    f32, bf16 = texts[jnp.float32][0], texts[jnp.bfloat16][0]
    dots = lambda text: [line for line in text.splitlines() if "tt.dot" in line]
    assert len(dots(f32)) == len(dots(bf16)) == 2
    assert all("inputPrecision" not in d and "tensor<32x32xf32>" in d for d in dots(f32))
    assert all("inputPrecision = tf32" in d and "tensor<64x64xf32>" in d for d in dots(bf16))
