"""The chunkwise-parallel form (`impl="chunked"`, `ops/chunked.py`) against the quadratic
reference, and the structure that makes it fast.

Shapes are small (three heads, Dk = 4 != Dv = 6) and chosen so the awkward cases appear:
widths that are not powers of two, partial last rows, chunk sizes that do not divide the
rows, one row per chunk, a single chunk, 0 / 1 / 2 prefix slots, decays of exactly 1.0
next to sharp ones, both state passes and all three rematerialisation policies.
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax.ops import chunked
from lasad_jax.ops.chunked import chunked_attention
from lasad_jax.ops.reference import masked_attention
from tests.ops.helpers import COL_DECAY, ROW_DECAY, random_qkv, rel_err

VARIANTS = ("lasad", "lasad_row", "linear_1d", "linear")
LOG_ROW = jnp.log(jnp.asarray(ROW_DECAY))
LOG_COL = jnp.log(jnp.asarray(COL_DECAY))

# (width, image tokens, prefix slots, chunk size, state pass, chunks per step)
CASES = [
    (5, 23, 1, 10, "scan", 0),  # partial last row, 2 rows per chunk: 3 chunks, all at once
    (3, 19, 2, 3, "matmul", 2),  # one row per chunk: 7 chunks in steps of 2 (last padded)
    (16, 53, 0, 40, "scan", 1),  # power-of-two width, 2-row chunks one at a time
    (7, 30, 0, 1000, "scan", 0),  # a single chunk: the masked form
]
# The inner-loop tier (-m "not slow") runs the first two cases; the others are `slow`.
VALUE_CASES = CASES[:2] + [pytest.param(*c, marks=pytest.mark.slow) for c in CASES[2:]]


def _logs(variant):
    # `linear_1d` reads its one decay from `log_row`, as the API passes it.
    return (LOG_COL, LOG_COL) if variant == "linear_1d" else (LOG_ROW, LOG_COL)


def _chunked(variant, width, num_prefix, chunk_size, **kw):
    return jax.jit(lambda q, k, v, lr, lc: chunked_attention(
        variant, q, k, v, width=width, num_prefix=num_prefix, log_row=lr, log_col=lc,
        chunk_size=chunk_size, **kw))


def _reference(variant, width, num_prefix):
    return lambda q, k, v, lr, lc: masked_attention(variant, q, k, v, width=width,
                                                    num_prefix=num_prefix, log_row=lr,
                                                    log_col=lc)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("width, num_image, num_prefix, chunk_size, state_pass, per_step",
                         VALUE_CASES)
def test_values_match_reference(variant, width, num_image, num_prefix, chunk_size,
                                state_pass, per_step):
    q, k, v = random_qkv(width + num_image, 2, num_prefix + num_image)
    args = (q, k, v, *_logs(variant))
    out = _chunked(variant, width, num_prefix, chunk_size, state_pass=state_pass,
                   chunks_per_step=per_step)(*args)
    assert out.shape == v.shape and out.dtype == jnp.float32
    assert rel_err(out, _reference(variant, width, num_prefix)(*args)) < 1e-5


def _grads(fn, args, cotangent):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(cotangent)


@pytest.mark.parametrize("variant, remat, case", [
    ("lasad", "inputs", CASES[0]), ("lasad", "states", CASES[1]),
    pytest.param("lasad", "none", CASES[2], marks=pytest.mark.slow),
    pytest.param("lasad_row", "inputs", CASES[1], marks=pytest.mark.slow),
    pytest.param("linear_1d", "inputs", CASES[0], marks=pytest.mark.slow),
    ("linear", "inputs", CASES[3]),  # a single chunk keeps its scores (no remat)
])
def test_gradients_match_reference(variant, remat, case):
    """All five gradients (q, k, v, both log decays) within 1e-4, every remat policy."""
    width, num_image, num_prefix, chunk_size, state_pass, per_step = case
    q, k, v = random_qkv(7 + width, 2, num_prefix + num_image)
    args = (q, k, v, *_logs(variant))
    ct = jnp.asarray(np.random.default_rng(3).normal(size=v.shape), jnp.float32)
    fn = _chunked(variant, width, num_prefix, chunk_size, state_pass=state_pass, remat=remat,
                  chunks_per_step=per_step)
    out, got = _grads(fn, args, ct)
    _, want = _grads(_reference(variant, width, num_prefix), args, ct)
    names = ("q", "k", "v", "log_row", "log_col")
    for name, g, w in zip(names, got, want):
        assert np.all(np.isfinite(np.asarray(g))), name
        assert rel_err(g, w) < 1e-4, (name, rel_err(g, w))
    if variant in ("lasad", "lasad_row"):
        # The sharp decays must actually receive gradient (they are learnable).
        assert np.all(np.abs(np.asarray(got[3])[1:]) > 0)
        assert np.all(np.abs(np.asarray(got[4])) > 0)


def test_state_passes_and_steps_agree_on_many_chunks():
    """24 chunks, decays down to 0.25^2 per chunk: the scan and the decay-matrix product,
    all chunks at once or in steps of 1, 5 (the last step partial) and 24, give the same
    result to float32 rounding."""
    q, k, v = random_qkv(1, 1, 2 * 24 * 4)
    runs = [_chunked("lasad", 4, 0, 8, state_pass=p, chunks_per_step=n)(q, k, v, LOG_ROW,
                                                                       LOG_COL)
            for p in chunked.STATE_PASSES for n in (0, 1, 5, 24)]
    for run in runs[1:]:
        assert rel_err(run, runs[0]) < 1e-6


# bfloat16 inputs against the float32 reference on the same (rounded) inputs. The form
# rounds the decay-weighted scores and the decayed keys to bfloat16 before their matmuls
# (2^-9 each); states and the inter-chunk read stay float32. Measured
# (benchmarks/numerics.py, 2026-12-04, 8 heads, D = 64, T = 257 to 4097, all variants):
# outputs <= 3.0e-3 of their largest magnitude, gradients <= 7.9e-3 (docs/operator.md,
# "Numerics"). The output bound sits at 2.6 times the measurement.
BF16_TOL = 2.0**-7


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_inputs(variant):
    width, num_prefix = 16, 1
    q, k, v = random_qkv(11, 2, num_prefix + 16 * 6 + 3, dtype=jnp.bfloat16)
    args32 = (q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
              *_logs(variant))
    ref = _reference(variant, width, num_prefix)(*args32)
    out = _chunked(variant, width, num_prefix, 2 * width)(q, k, v, *_logs(variant))
    assert out.dtype == jnp.float32  # the API casts to q's dtype
    assert rel_err(out, ref) < BF16_TOL


def _eqns(jaxpr, primitive: str) -> list:
    """Every equation of `primitive` in a jaxpr, nested jaxprs (scan, remat) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _eqns(sub, primitive)
    return found


def test_bfloat16_matmuls_take_bfloat16_operands():
    """No upfront float32 cast: with bf16 inputs the intra-chunk products and the chunk sums
    multiply bf16 operands into float32 (the old form cast q, k, v to float32 first); the
    inter-chunk read multiplies float32 queries and states."""
    q, k, v = random_qkv(0, 1, 1 + 5 * 6, dtype=jnp.bfloat16)
    fn = functools.partial(chunked_attention, "lasad", width=5, num_prefix=1, chunk_size=10,
                           log_row=LOG_ROW, log_col=LOG_COL, chunks_per_step=0)
    # The prefix's own tiny products and the Toeplitz smoothing of float32 states aside.
    dots = [e for e in _eqns(jax.make_jaxpr(fn)(q, k, v).jaxpr, "dot_general")
            if e.outvars[0].aval.shape[-2:] != (5, 4 * 6)]
    image = [e for e in dots if e.invars[0].aval.ndim >= 5]
    dtypes = sorted(tuple(x.aval.dtype.name for x in e.invars) for e in image)
    # q k^T, scores v, chunk sums in bf16; the inter-chunk read in float32.
    assert dtypes == [("bfloat16", "bfloat16")] * 3 + [("float32", "float32")], dtypes
    assert all(e.params["preferred_element_type"] == jnp.float32 for e in image)


def test_chunks_run_in_parallel_and_only_the_state_pass_loops():
    """All chunks at once (`chunks_per_step=0`, the default off CPU): the only loop is the
    state pass, whose body is elementwise; intra-chunk products, chunk sums and inter-chunk
    reads are batched over all chunks (the old form ran every chunk's matmuls in one
    sequential `lax.scan`)."""
    q, k, v = random_qkv(0, 1, 8 * 4)
    fn = functools.partial(chunked_attention, "lasad", width=4, num_prefix=0, chunk_size=8,
                           log_row=LOG_ROW, log_col=LOG_COL, state_pass="scan",
                           chunks_per_step=0)
    jaxpr = jax.make_jaxpr(fn)(q, k, v).jaxpr
    scans = _eqns(jaxpr, "scan")
    assert len(scans) == 1 and scans[0].params["length"] == 3  # 4 chunks, 3 boundaries
    assert not _eqns(scans[0].params["jaxpr"].jaxpr, "dot_general")
    # Every image matmul carries the chunk axis (4 chunks, or 3 for sums / reads).
    image = [e for e in _eqns(jaxpr, "dot_general") if e.invars[0].aval.ndim >= 5]
    assert all(e.outvars[0].aval.shape[0] in (3, 4) for e in image)


@pytest.mark.parametrize("kwargs, words", [
    (dict(state_pass="loop"), ["state_pass", "scan", "matmul"]),
    (dict(remat="all"), ["remat", "none", "states", "inputs"]),
])
def test_bad_options_name_the_choices(kwargs, words):
    q, k, v = random_qkv(0, 1, 8)
    with pytest.raises(ValueError) as err:
        chunked_attention("lasad", q, k, v, width=4, num_prefix=0, log_row=LOG_ROW,
                          log_col=LOG_COL, **kwargs)
    assert all(w in str(err.value) for w in words)


@pytest.mark.parametrize("platform, keep", [("cpu", True), ("gpu", True), ("tpu", False)])
def test_a_single_chunk_keeps_its_scores_only_where_the_platform_says(monkeypatch, platform,
                                                                      keep):
    """`Defaults.keep_single_chunk`: on CPU and GPU one chunk (the masked form) keeps its
    `C x C` scores for the backward pass; on TPU it recomputes them, which let LASADGen-L's
    512 px step fit a TPU v4 chip. Read off the residuals `jax.vjp` holds, with the
    platform's defaults, and the same values and gradients either way."""
    monkeypatch.setattr(chunked, "target_platform", lambda: platform)
    width, num_image = 6, 30  # 30 image tokens in one chunk of the default 1024
    q, k, v = random_qkv(3, 2, 1 + num_image)

    def fn(q, k, v, lr, lc):
        return chunked_attention("lasad", q, k, v, width=width, num_prefix=1, log_row=lr,
                                 log_col=lc)

    out, vjp = jax.vjp(fn, q, k, v, LOG_ROW, LOG_COL)
    square = [x.shape for x in jax.tree.leaves(vjp) if x.shape[-2:] == (num_image, num_image)]
    assert bool(square) == keep, square
    ref = _reference("lasad", width, 1)
    assert rel_err(out, ref(q, k, v, LOG_ROW, LOG_COL)) < 1e-5
    cot = jnp.asarray(np.random.default_rng(0).normal(size=out.shape), jnp.float32)
    got = vjp(cot)
    want = jax.vjp(ref, q, k, v, LOG_ROW, LOG_COL)[1](cot)
    assert max(rel_err(g, w) for g, w in zip(got, want)) < 1e-4
