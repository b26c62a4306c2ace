"""Chunked and decoding forms against the quadratic reference.

Grid: widths 1, 2, 5, 16; partial last rows; 0, 1 or 2 prefix slots; three heads with
decays 1.0, in between and <= 0.3; Dk != Dv; chunk sizes that force one row per chunk,
chunks that do not divide the rows, and a single chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.ops.helpers import PARALLEL, decay_kwargs, decode_all, random_qkv, rel_err

# (width, image tokens): each last row is partial except width 1 and the 2 x 2 grid.
GRIDS = [(1, 6), (2, 4), (2, 7), (5, 13), (16, 53)]
# The inner loop (-m "not slow") keeps one prefix slot, the model's case.
PREFIXES = [pytest.param(0, marks=pytest.mark.slow), 1, pytest.param(2, marks=pytest.mark.slow)]


def parallel(variant, q, k, v, *, width, num_prefix, impl, chunk_size=None, **decays):
    """Runs a parallel form under `jax.jit`, decays traced, grid and impl static."""
    kw = decay_kwargs(variant, width, **decays)
    static = {n: x for n, x in kw.items() if n == "width"}
    arrays = {n: x for n, x in kw.items() if n != "width"}
    fn = functools.partial(PARALLEL[variant], num_prefix=num_prefix, impl=impl,
                           chunk_size=chunk_size, **static)
    return jax.jit(lambda q, k, v, arrays: fn(q, k, v, **arrays))(q, k, v, arrays)


@pytest.mark.parametrize("variant", list(PARALLEL))
@pytest.mark.parametrize("width,num_image", GRIDS)
@pytest.mark.parametrize("num_prefix", PREFIXES)
def test_chunked_and_decode_match_reference(variant, width, num_image, num_prefix):
    q, k, v = random_qkv(width * 10 + num_prefix, 2, num_prefix + num_image)
    ref = parallel(variant, q, k, v, width=width, num_prefix=num_prefix, impl="reference")
    # One row per chunk, a chunk that does not divide the grid, and the default (one chunk).
    for chunk_size in (1, 2 * width + 1, None):
        out = parallel(variant, q, k, v, width=width, num_prefix=num_prefix, impl="chunked",
                       chunk_size=chunk_size)
        assert out.dtype == jnp.float32
        assert rel_err(out, ref) < 1e-5, (chunk_size, rel_err(out, ref))
    dec, final = decode_all(variant, q, k, v, width=width, num_prefix=num_prefix)
    assert rel_err(dec, ref) < 1e-5
    assert int(final.pos) == num_prefix + num_image


@pytest.mark.parametrize("variant", list(PARALLEL))
@pytest.mark.parametrize("width,num_image,num_prefix", [(5, 13, 1), (2, 7, 2), (16, 40, 0)])
def test_chunked_gradients_match_reference(variant, width, num_image, num_prefix):
    q, k, v = random_qkv(7, 2, num_prefix + num_image)
    cot = jnp.asarray(np.random.default_rng(3).normal(size=v.shape), jnp.float32)
    row0, col0 = jnp.array([1.0, 0.8, 0.25]), jnp.array([0.3, 1.0, 0.9])

    def loss(impl, q, k, v, row, col):
        kw = decay_kwargs(variant, width, row=row, col=col)
        out = PARALLEL[variant](q, k, v, num_prefix=num_prefix, impl=impl, chunk_size=width, **kw)
        return jnp.sum(out * cot)

    argnums = (1, 2, 3, 4, 5)
    want = jax.jit(jax.grad(loss, argnums), static_argnums=0)("reference", q, k, v, row0, col0)
    got = jax.jit(jax.grad(loss, argnums), static_argnums=0)("chunked", q, k, v, row0, col0)
    names = ("q", "k", "v", "row_decay", "col_decay")
    for name, g, w in zip(names, got, want):
        assert np.all(np.isfinite(g)), name
        assert rel_err(g, w) < 1e-4, (name, rel_err(g, w))
    if variant in ("lasad", "lasad_row"):
        # The decays must actually receive gradient (they are learnable in the model).
        assert np.all(np.abs(np.asarray(got[3])) > 0) and np.all(np.abs(np.asarray(got[4])) > 0)


# Measured: bf16 inputs, float32 internals, bf16 output. The only error left against the
# float32 reference on the same (bf16-rounded) inputs is the final rounding to bf16, at most
# 2^-8 of the output's magnitude; BF16_TOL leaves a little room above that.
BF16_TOL = 2.0**-7


@pytest.mark.parametrize("variant", list(PARALLEL))
def test_bfloat16_inputs_keep_float32_state(variant):
    width, num_prefix = 16, 1
    q, k, v = random_qkv(11, 2, num_prefix + 16 * 6 + 3, dtype=jnp.bfloat16)
    ref = parallel(variant, q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                   width=width, num_prefix=num_prefix, impl="reference")
    out = parallel(variant, q, k, v, width=width, num_prefix=num_prefix, impl="chunked",
                   chunk_size=2 * width)
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < BF16_TOL
    dec, final = decode_all(variant, q, k, v, width=width, num_prefix=num_prefix)
    assert dec.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(final):
        assert leaf.dtype in (jnp.float32, jnp.int32)
    assert rel_err(dec, ref) < BF16_TOL


def test_auto_matches_reference_and_is_jittable():
    q, k, v = random_qkv(5, 1, 1 + 8 * 8)
    ref = parallel("lasad", q, k, v, width=8, num_prefix=1, impl="reference")
    out = parallel("lasad", q, k, v, width=8, num_prefix=1, impl="auto")
    assert rel_err(out, ref) < 1e-5


def test_column_smoothing_matches_numpy():
    from lasad_jax.ops.decay import smooth_columns

    rng = np.random.default_rng(0)
    states = jnp.asarray(rng.normal(size=(2, 3, 37, 4, 5)), jnp.float32)  # [B, H, w, Dk, Dv]
    log_b = jnp.log(jnp.array([1.0, 0.5, 0.1]))
    got = smooth_columns(states, log_b)
    # Independent numpy: H(c) = sum_c' b^|c - c'| A(c').
    c = np.arange(37)
    b = np.exp(np.asarray(log_b, np.float64))
    weights = b[:, None, None] ** np.abs(c[:, None] - c[None, :])[None]  # [H, w, w]
    want = np.einsum("hcx,bhxde->bhcde", weights, np.asarray(states, np.float64))
    assert rel_err(got, want) < 1e-5
