"""The intra-chunk output kernel (`pallas.masked.intra_attention`: forward and Pallas
backward) against the quadratic form restricted to each chunk.

Run on CPU in interpret mode: the TPU path through `pltpu.InterpretParams` (Mosaic's
simulator), the GPU path through the generic interpreter (which also exercises its
feature padding to Triton's power-of-two sizes). Shapes are small on purpose and chosen so
the awkward cases appear: a partial last grid row, T not a multiple of the block, tiles
that straddle chunk boundaries, a width that is not a power of two, Dk != Dv (4 vs 6),
0, 1 and 2 prefix slots (with chunks, their key block lies outside every later query's
chunk), and decays of exactly 1.0 (log 0) next to sharp ones.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax.ops.decay import decay_mask
from lasad_jax.ops.pallas.masked import intra_attention
from tests.ops.helpers import COL_DECAY, ROW_DECAY, random_qkv, rel_err, triton_lowering, vjp_at

LOG_ROW = jnp.log(jnp.asarray(ROW_DECAY))
LOG_COL = jnp.log(jnp.asarray(COL_DECAY))
TOL = 1e-4
# bfloat16 inputs: products of bf16 operands are exact in float32, but the decay-weighted
# scores (and, in the backward, the cotangent and dP) are rounded to bfloat16 before their
# second product, 2^-9 relative each, and the gradients are rounded to bfloat16 once.
# Measured (three seeds, the case below and CASES[1], and one 64-token chunk): forward
# <= 2.7e-3 of the largest output, gradients <= 7.6e-3 (q, k), 6.8e-3 (v), log decays
# <= 6.6e-3. The bounds sit above those by a factor of about 2.
BF16_TOL = 2.0**-7
BF16_GRAD_TOL = 2.0**-6


def intra_reference(q, k, v, lr, lc, *, width: int, rows_per_chunk: int | None,
                    num_prefix: int = 0):
    """The masked form (numpy-built mask of docs/operator.md) with every image pair in
    different chunks removed, in float32; prefix keys weigh 1 for every later query."""
    t = q.shape[1]
    mask = decay_mask("lasad", t, num_prefix, width, lr, lc)
    if rows_per_chunk is not None:
        slot = np.arange(t)
        chunk = ((slot - num_prefix) // width) // rows_per_chunk
        keep = (chunk[:, None] == chunk[None, :]) | (slot[None, :] < num_prefix)
        mask = mask * jnp.asarray(keep, jnp.float32)[None]
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    scores = jnp.einsum("bihd,bjhd->bhij", q, k) * mask[None]
    return jnp.einsum("bhij,bjhe->bihe", scores, v)


# (T, width, rows_per_chunk, block_q, block_k, num_prefix)
CASES = [
    (22, 5, None, 16, 16, 1),  # one chunk; partial last row; T % block != 0; class slot
    (70, 8, 3, 32, 16, 1),  # chunks of 24 tokens: tiles straddle chunk boundaries
    (40, 6, 2, 16, 32, 0),  # key block larger than query block and than a chunk
    (37, 3, 1, 16, 16, 2),  # one row per chunk, partial last row, two prefix slots
    (54, 4, 2, 16, 16, 18),  # prefix keys over two blocks, the second shared with images
]


def _kernel(backend: str, width: int, rows, bq: int, bk: int, num_prefix: int = 0, **kw):
    def f(q, k, v, lr, lc):
        return intra_attention(q, k, v, width=width, log_row=lr, log_col=lc,
                               num_prefix=num_prefix, rows_per_chunk=rows, block_q=bq,
                               block_k=bk, interpret=True, backend=backend, **kw)
    return f


@pytest.mark.parametrize("backend, case", [("tpu", CASES[0]), ("gpu", CASES[4])] + [
    pytest.param("tpu", c, marks=pytest.mark.slow) for c in CASES[1:]])
def test_forward_matches_reference(backend, case):
    t, width, rows, bq, bk, num_prefix = case
    q, k, v = random_qkv(t, 2, t)
    args = (q, k, v, LOG_ROW, LOG_COL)
    out = _kernel(backend, width, rows, bq, bk, num_prefix)(*args)
    assert out.shape == v.shape and out.dtype == jnp.float32
    want = intra_reference(*args, width=width, rows_per_chunk=rows, num_prefix=num_prefix)
    assert rel_err(out, want) < TOL


@pytest.mark.parametrize("backend, case", [
    ("gpu", CASES[1]), pytest.param("gpu", CASES[3], marks=pytest.mark.slow),
    pytest.param("gpu", CASES[4], marks=pytest.mark.slow),
    ("tpu", CASES[0]), pytest.param("tpu", CASES[2], marks=pytest.mark.slow),
])
def test_gradients_match_reference(backend, case):
    """Forward and the five gradients (q, k, v, log a, log b) from the Pallas backward."""
    t, width, rows, bq, bk, num_prefix = case
    q, k, v = random_qkv(100 + t, 1, t)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(t).normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_kernel(backend, width, rows, bq, bk, num_prefix)), args, ct)
    ref, ref_grads = vjp_at(lambda *a: intra_reference(
        *a, width=width, rows_per_chunk=rows, num_prefix=num_prefix), args, ct)
    assert rel_err(out, ref) < TOL
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert rel_err(g, r) < TOL, (name, rel_err(g, r))
    # The sharp decays must actually receive gradient (no silently zero path); with one
    # row per chunk no pair is a row apart, so the row decay has none to receive.
    assert np.all(np.abs(np.asarray(grads[3])[1:]) > 0) == (rows != 1)
    assert np.all(np.abs(np.asarray(grads[4])) > 0)


def test_single_buffered_sequence_blocks_give_the_same_values_and_gradients(monkeypatch):
    """Long sequences on TPU hold the whole keys and values in one VMEM buffer
    (`masked._single_buffer`); forced on at a small size, Mosaic's simulator gives the
    reference output and all five gradients."""
    from lasad_jax.ops.pallas import masked

    monkeypatch.setattr(masked, "TPU_SINGLE_BUFFER_BYTES", 0)
    made = []
    spec = masked._seq_spec
    monkeypatch.setattr(masked, "_seq_spec", lambda *a, **kw: made.append(kw) or spec(*a, **kw))
    t, width, rows, bq, bk, num_prefix = CASES[1]
    q, k, v = random_qkv(3, 1, t)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(3).normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_kernel("tpu", width, rows, bq, bk, num_prefix)), args, ct)
    whole = [kw for kw in made if kw.get("whole")]  # forward, dq, dk/dv: 2 each
    assert len(whole) >= 6 and all(kw["single"] for kw in whole)
    ref, ref_grads = vjp_at(lambda *a: intra_reference(
        *a, width=width, rows_per_chunk=rows, num_prefix=num_prefix), args, ct)
    assert rel_err(out, ref) < TOL
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert rel_err(g, r) < TOL, (name, rel_err(g, r))


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_inputs(out_dtype):
    """bf16 in; the output in float32 (what the chunked split adds to) or in bf16 (the
    whole operator with one chunk), the gradients in bf16 either way."""
    t, width, rows, bq, bk = 45, 5, 2, 16, 32
    q, k, v = random_qkv(7, 1, t, jnp.bfloat16)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(7).normal(size=v.shape), jnp.float32)
    f = _kernel("gpu", width, rows, bq, bk, 1, out_dtype=out_dtype)
    out, grads = vjp_at(jax.jit(f), args, ct)
    ref, ref_grads = vjp_at(lambda *a: intra_reference(
        *a, width=width, rows_per_chunk=rows, num_prefix=1), args, ct)
    assert out.dtype == out_dtype
    assert rel_err(out, ref) < BF16_TOL
    for name, g, r in zip(("q", "k", "v"), grads[:3], ref_grads[:3]):
        assert g.dtype == jnp.bfloat16 and rel_err(g, r) < BF16_GRAD_TOL, name
    for name, g, r in zip(("log_row", "log_col"), grads[3:], ref_grads[3:]):
        assert g.dtype == jnp.float32 and rel_err(g, r) < BF16_GRAD_TOL, name


def test_decays_of_one_match_unit_mask():
    """With every decay 1.0 and one chunk the op is plain causal linear attention."""
    t, width = 20, 5
    q, k, v = random_qkv(5, 1, t)
    zeros = jnp.zeros((3,), jnp.float32)
    out = _kernel("tpu", width, None, 16, 16)(q, k, v, zeros, zeros)
    scores = jnp.einsum("bihd,bjhd->bhij", q, k) * jnp.tril(jnp.ones((t, t)))
    assert rel_err(out, jnp.einsum("bhij,bjhe->bihe", scores, v)) < TOL


@pytest.mark.parametrize("kwargs", [
    dict(backend="cuda"), dict(backend="gpu", block_q=24), dict(backend="tpu", block_k=12),
    dict(backend="gpu", num_warps=3), dict(backend="gpu", num_warps=True),
    dict(backend="gpu", num_stages=0), dict(backend="gpu", num_stages=2.0),
    dict(backend="tpu", num_warps=4)])
def test_bad_kernel_options_raise(kwargs):
    q, k, v = random_qkv(0, 1, 8)
    with pytest.raises(ValueError):
        intra_attention(q, k, v, width=4, log_row=LOG_ROW, log_col=LOG_COL, interpret=True,
                        **kwargs)


def test_gpu_products_and_tiles_follow_the_input_dtype(monkeypatch):
    """float32 inputs: IEEE float32 dots on 32-token tiles; bfloat16 inputs: bf16 x bf16
    tensor-core dots (float32 accumulation) on 64-token tiles. Read off the Triton IR."""
    texts = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        q = jnp.zeros((1, 256, 2, 16), dtype)
        def f(q, k, v):
            return intra_attention(q, k, v, width=16, log_row=LOG_ROW[:2],
                                   log_col=LOG_COL[:2], rows_per_chunk=4, backend="gpu")
        texts[dtype] = []
        assert triton_lowering(f, (q, q, q), monkeypatch, texts[dtype]) == 1
    f32, bf16 = texts[jnp.float32][0], texts[jnp.bfloat16][0]
    def dots(text):
        return [line for line in text.splitlines() if "tt.dot" in line]
    assert len(dots(f32)) == len(dots(bf16)) == 2
    assert all("inputPrecision" not in d and "tensor<32x32xf32>" in d for d in dots(f32))
    assert all("tensor<64x64xbf16> * tensor<64x16xbf16>" in d
               or "tensor<64x16xbf16> * tensor<16x64xbf16>" in d for d in dots(bf16)), dots(bf16)


@pytest.mark.parametrize("launch", [{}, dict(num_warps=8, num_stages=3)])
def test_triton_launch_settings_reach_every_kernel(monkeypatch, launch):
    """`num_warps` and `num_stages` (the tile sweep of benchmarks/masked_probe.py) reach
    the forward, dq and dk/dv kernels alike; without them, `default_tiles`' 4 and 2."""
    q = jnp.zeros((1, 256, 2, 16), jnp.bfloat16)

    def loss(q, k, v):
        o = intra_attention(q, k, v, width=16, log_row=LOG_ROW[:2], log_col=LOG_COL[:2],
                            num_prefix=1, backend="gpu", **launch)
        return jnp.sum(o.astype(jnp.float32) ** 2)

    program = []
    assert triton_lowering(jax.grad(loss, argnums=(0, 1, 2)), (q, q, q), monkeypatch,
                           program=program) == 3
    want = (launch.get("num_warps", 4), launch.get("num_stages", 2))
    assert [int(n) for n in re.findall(r"num_warps = (\d+) : i32", program[0])] == [want[0]] * 3
    assert [int(n) for n in re.findall(r"num_stages = (\d+) : i32", program[0])] == [want[1]] * 3


def test_tpu_vmem_counts_double_buffered_padded_blocks():
    """A block's VMEM: twice its bytes, the last side padded to 128 lanes and the one
    before to 8 rows of 32 bits (16 of bf16); squeezed sides count 1."""
    from jax.experimental import pallas as pl

    from lasad_jax.ops.pallas.masked import tpu_vmem_bytes

    whole = pl.BlockSpec((None, None, 16384, 64), lambda b, h, n: (b, h, 0, 0))
    tile = pl.BlockSpec((None, None, 20, 128), lambda b, h, n: (b, h, n, 0))
    k = jax.ShapeDtypeStruct((1, 16, 16384, 64), jnp.bfloat16)
    o = jax.ShapeDtypeStruct((1, 16, 16384, 128), jnp.float32)
    assert tpu_vmem_bytes([whole], [k]) == 2 * 16384 * 128 * 2
    assert tpu_vmem_bytes([tile], [o]) == 2 * 24 * 128 * 4
    assert tpu_vmem_bytes([tile], [k]) == 2 * 32 * 128 * 2
    single = pl.BlockSpec((None, None, 16384, 64), lambda b, h, n: (b, h, 0, 0),
                          pipeline_mode=pl.Buffered(1))
    assert tpu_vmem_bytes([single, tile], [k, k]) == 16384 * 128 * 2 + 2 * 32 * 128 * 2


def _tpu_kernel_settings(monkeypatch, tokens: int, width: int) -> list:
    """(VMEM limit asked of Mosaic, buffers of each block) of every kernel that lowering
    the operator for TPU at `tokens` (bf16, D = 64, one prefix slot, 8-row chunks) builds."""
    from lasad_jax.ops.pallas import masked

    seen, make, pallas_call = [], masked.compiler_params, masked.pl.pallas_call

    def spy_params(*args, **kwargs):
        params = make(*args, **kwargs)
        seen.append([params.vmem_limit_bytes])
        return params

    def spy_call(kernel, *, in_specs, **kwargs):
        seen[-1].append([2 if s.pipeline_mode is None else s.pipeline_mode.buffer_count
                         for s in in_specs])
        return pallas_call(kernel, in_specs=in_specs, **kwargs)

    monkeypatch.setattr(masked, "compiler_params", spy_params)
    monkeypatch.setattr(masked.pl, "pallas_call", spy_call)
    q = jax.ShapeDtypeStruct((1, tokens, 1, 64), jnp.bfloat16)
    log = jax.ShapeDtypeStruct((1,), jnp.float32)

    def f(q, k, v, lr, lc):
        return masked.intra_attention(q, k, v, width=width, log_row=lr, log_col=lc,
                                      num_prefix=1, rows_per_chunk=8, backend="tpu")

    jax.jit(f).trace(q, q, q, log, log).lower(lowering_platforms=("tpu",))
    return seen


def test_long_tpu_sequences_single_buffer_the_sequence_then_raise_the_vmem_limit(
        monkeypatch):
    """The intra-chunk kernel holds the whole sequence's keys and values. Double-buffered
    at T = 16385, D = 64 they took 16.4 MiB, over a v4's 16 MiB of VMEM and Mosaic's 16 MiB
    default (neither a v4 nor a v5e compiled it, benchmarks/tpu_aot.py): there they get one
    buffer, and fit the default. Longer still (T = 65537) one buffer is not enough and
    `call` asks Mosaic for more; at 257 tokens nothing changes."""
    from lasad_jax.ops.pallas import masked

    [(limit, buffers)] = _tpu_kernel_settings(monkeypatch, 1 + 16 * 16, 16)
    assert limit is None and buffers == [2] * 5
    [(limit, buffers)] = _tpu_kernel_settings(monkeypatch, 1 + 128 * 128, 128)
    assert limit is None and buffers == [2, 2, 2, 1, 1]  # decays, query tile, keys, values
    [(limit, buffers)] = _tpu_kernel_settings(monkeypatch, 1 + 256 * 256, 256)
    assert buffers == [2, 2, 2, 1, 1]
    # Blocks padded to (8 or 16) x 128 tiles: keys and values once, 2 x 65664 x 128 x 2
    # bytes, the bf16 query tile 2 x 128 x 128 x 2, the float32 output tile
    # 2 x 128 x 128 x 4, the two log decays 2 x 2 x 8 x 128 x 4; a quarter more and 4 MiB.
    blocks = 2 * 65664 * 128 * 2 + 2 * 128 * 128 * 2 + 2 * 128 * 128 * 4 + 2 * 2 * 8 * 128 * 4
    assert limit == blocks * 5 // 4 + 4 * 2**20 > 16 * 2**20
    assert masked.compiler_params("tpu", 3, 4, 2, 10**9).vmem_limit_bytes == \
        masked.TPU_MAX_SCOPED_VMEM
