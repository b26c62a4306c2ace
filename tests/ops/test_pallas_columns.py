"""The per-column kernels (`pallas.columns`: chunk sums and state reads) against einsums.

Interpret mode on CPU, both backends. Each kernel's custom VJP (whose backward runs the
kernels) is checked against XLA's autodiff of the same einsum, for the inputs and the log
decay, with padded rows (`R < R'`, weight 0) and several columns per program.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lasad_jax.ops.pallas import columns
from tests.ops.helpers import rel_err, vjp_at

M, W, RP, DX, DY = 3, 4, 16, 16, 32  # 3 (batch*head*chunk) rows, 4 columns, 16 padded rows
ROWS = 5  # real rows per chunk


def _cfg(backend: str, cols: int, dtype=jnp.float32):
    prec = lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT
    return columns.ColumnConfig(rows=ROWS, cols=cols, interpret=True, backend=backend,
                                precision=prec, dtype=jnp.dtype(dtype).name)


def _weights(clock: str, la):
    r = jnp.arange(RP, dtype=jnp.float32)
    tick = ROWS - r if clock == "end" else r
    return jnp.where(r < ROWS, jnp.exp(tick[None] * la.reshape(-1, 1)), 0.0)  # [M, R']


def _inputs(seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(M, W, RP, DX)), dtype)
    y = jnp.asarray(rng.normal(size=(M, W, RP, DY)), dtype)
    mat = jnp.asarray(rng.normal(size=(M, W, DX, DY)), jnp.float32)
    la = jnp.log(jnp.asarray([1.0, 0.7, 0.2], jnp.float32)).reshape(M, 1, 1)
    return x, y, mat, la



def _assert_vjps_agree(fn, want, args: dict, ct) -> None:
    """The kernel's value and the gradient of each argument equal the einsum form's."""
    out, grads = vjp_at(fn, tuple(args.values()), ct)
    ref, ref_grads = vjp_at(want, tuple(args.values()), ct)
    assert rel_err(out, ref) < 1e-5
    for name, g, r in zip(args, grads, ref_grads):
        assert g.shape == r.shape and rel_err(g, r) < 1e-5, (name, rel_err(g, r))

@pytest.mark.parametrize("backend, cols, clock", [("tpu", 4, "end"), ("gpu", 2, "start")])
def test_column_outer(backend, cols, clock):
    x, y, _, la = _inputs(0)
    xt = x.swapaxes(-1, -2)

    def want(xt, y, la):
        e = _weights(clock, la)
        return jnp.einsum("mwdr,mr,mwre->mwde", xt, e, y)

    fn = jax.jit(lambda xt, y, la: columns.column_outer(_cfg(backend, cols), clock, xt, y, la))
    ct = jnp.asarray(np.random.default_rng(1).normal(size=(M, W, DX, DY)), jnp.float32)
    _assert_vjps_agree(fn, want, dict(x=xt, y=y, log_a=la), ct)


@pytest.mark.parametrize("backend, cols, clock", [
    ("tpu", 2, "start"),
    ("gpu", 2, "start")])  # GPU: one backward kernel for both grads
def test_column_apply(backend, cols, clock):
    x, _, mat, la = _inputs(2)

    def want(x, mat, la):
        return jnp.einsum("mr,mwrd,mwde->mwre", _weights(clock, la), x, mat)

    fn = jax.jit(lambda x, mat, la: columns.column_apply(_cfg(backend, cols), clock, x, mat,
                                                         la))
    ct = jnp.asarray(np.random.default_rng(3).normal(size=(M, W, RP, DY)), jnp.float32)
    _assert_vjps_agree(fn, want, dict(x=x, mat=mat, log_a=la), ct)


def test_bfloat16_operands_float32_results():
    """bf16 inputs: the chunk sums multiply bf16 operands (the decayed x rounded to bf16)
    into float32; the state read multiplies float32 (the state is not rounded)."""
    x, y, mat, la = _inputs(4, jnp.bfloat16)
    cfg = _cfg("gpu", 2, jnp.bfloat16)
    sums = columns.column_outer(cfg, "end", x.swapaxes(-1, -2), y, la)
    want = jnp.einsum("mwrd,mr,mwre->mwde", x.astype(jnp.float32), _weights("end", la),
                      y.astype(jnp.float32))
    assert sums.dtype == jnp.float32
    # Only the decayed x is rounded to bf16 (2^-9 relative) before the product.
    assert rel_err(sums, want) < 2.0**-8
    read = columns.column_apply(cfg, "start", x, mat, la)
    want = jnp.einsum("mr,mwrd,mwde->mwre", _weights("start", la), x.astype(jnp.float32), mat)
    assert read.dtype == jnp.float32 and rel_err(read, want) < 1e-5


def test_padded_rows_carry_no_weight_even_for_tiny_decays():
    """Rows r >= R are padding: weight 0 there even where `exp(tick * log a)` would
    overflow (a = 1e-30, tick < 0 for the 'end' clock), so no inf * 0 = nan appears."""
    x, y, _, _ = _inputs(5)
    la = jnp.full((M, 1, 1), jnp.log(1e-30), jnp.float32)
    y = y.at[:, :, ROWS:].set(1.0)  # nonzero padding, to see any leak
    sums = columns.column_outer(_cfg("gpu", 4), "end", x.swapaxes(-1, -2), y, la)
    assert np.all(np.isfinite(np.asarray(sums)))


# ids: conftest skips off a GPU every test with "gpu" among its keywords, ids included.
@pytest.mark.parametrize("backend", ["tpu", "gpu"], ids=["mosaic", "triton"])
def test_bfloat16_state_storage(backend):
    """`state_dtype="bfloat16"` (bf16 inputs' default in the split): `column_outer` writes
    its sums in bf16 (the float32 sum rounded once); `column_apply` reads a bf16 state
    with bf16 operands and float32 accumulation, exact products of the stored values;
    their cotangents are bf16 too, each gradient in its input's dtype."""
    x, y, mat, la = _inputs(6, jnp.bfloat16)
    cfg = dataclasses.replace(_cfg(backend, 2, jnp.bfloat16), state_dtype="bfloat16")
    xt = x.swapaxes(-1, -2)
    sums, pull_outer = jax.vjp(lambda xt, y, la: columns.column_outer(cfg, "end", xt, y, la),
                               xt, y, la)
    want = jnp.einsum("mwrd,mr,mwre->mwde", x.astype(jnp.float32), _weights("end", la),
                      y.astype(jnp.float32))
    # Two roundings to bf16: the decayed x before the product, the sum after it.
    assert sums.dtype == jnp.bfloat16 and rel_err(sums, want) < 2.0**-7
    ds = jnp.asarray(np.random.default_rng(7).normal(size=sums.shape), jnp.bfloat16)
    dxt, dy, dla = pull_outer(ds)
    assert (dxt.dtype, dy.dtype, dla.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    e = _weights("end", la)
    want_dy = jnp.einsum("mwdr,mr,mwde->mwre", xt.astype(jnp.float32), e,
                         ds.astype(jnp.float32))
    assert rel_err(dy, want_dy) < 2.0**-8  # exact products, rounded once
    mat16 = mat.astype(jnp.bfloat16)
    read, pull_apply = jax.vjp(
        lambda x, m, la: columns.column_apply(cfg, "start", x, m, la), x, mat16, la)
    want = jnp.einsum("mr,mwrd,mwde->mwre", _weights("start", la), x.astype(jnp.float32),
                      mat16.astype(jnp.float32))
    assert read.dtype == jnp.float32 and rel_err(read, want) < 1e-5
    do = jnp.asarray(np.random.default_rng(8).normal(size=read.shape), jnp.float32)
    dx, dmat, _ = pull_apply(do)
    assert dx.dtype == jnp.bfloat16 and dmat.dtype == jnp.bfloat16
    want_dmat = jnp.einsum("mr,mwrd,mwre->mwde", _weights("start", la), x.astype(jnp.float32),
                           do.astype(jnp.bfloat16).astype(jnp.float32))
    assert rel_err(dmat, want_dmat) < 2.0**-7


def test_tokens_layout_reads_chunks_where_they_lie():
    """The "tokens" layout (GPU): x, y and the outputs are `[B, N, R, W, H, D]` views of a
    sequence, a call reading chunks `offset .. offset + N' - 1`; its gradients are those
    of the whole arrays (zero on chunks it did not read). Against einsums, values and
    the gradients of x, y (or the state) and log a."""
    b, n, rows, w, h, d = 2, 3, 16, 16, 2, 16
    rng = np.random.default_rng(9)
    x, y = (jnp.asarray(rng.normal(size=(b, n, rows, w, h, d)), jnp.float32) for _ in range(2))
    la = jnp.log(jnp.asarray(rng.uniform(0.3, 1.0, size=(n - 1) * b * h), jnp.float32))
    la = la.reshape(-1, 1, 1)  # rows m = (chunk * B + batch) * H + head
    cfg = dataclasses.replace(_cfg("gpu", 8), rows=rows, layout="tokens")

    def per_row(x6, offset):  # [B, N, R, W, H, D] -> [(N-1)*B*H, W, R, D], as the states
        part = x6[:, offset:offset + n - 1]
        return part.transpose(1, 0, 4, 3, 2, 5).reshape(-1, w, rows, d)

    def weights(clock, la):
        r = jnp.arange(rows, dtype=jnp.float32)
        tick = rows - r if clock == "end" else r
        return jnp.exp(tick[None] * la.reshape(-1, 1))  # [M, R]

    def outer_want(x, y, la):
        return jnp.einsum("mwrd,mr,mwre->mwde", per_row(x, 0), weights("end", la), per_row(y, 0))

    fn = jax.jit(lambda x, y, la: columns.column_outer(cfg, "end", x, y, la))
    ct = jnp.asarray(rng.normal(size=((n - 1) * b * h, w, d, d)), jnp.float32)
    _assert_vjps_agree(fn, outer_want, dict(x=x, y=y, log_a=la), ct)

    mat = jnp.asarray(rng.normal(size=((n - 1) * b * h, w, d, d)), jnp.float32)

    def apply_want(x, mat, la):  # chunk i of the output reads chunk i + 1 of x
        o = jnp.einsum("mr,mwrd,mwde->mwre", weights("start", la), per_row(x, 1), mat)
        return o.reshape(n - 1, b, h, w, rows, d).transpose(1, 0, 4, 3, 2, 5)

    fn = jax.jit(lambda x, mat, la: columns.column_apply(cfg, "start", x, mat, la, 1))
    ct = jnp.asarray(rng.normal(size=(b, n - 1, rows, w, h, d)), jnp.float32)
    _assert_vjps_agree(fn, apply_want, dict(x=x, mat=mat, log_a=la), ct)

    # The TPU kernels read columns only: their backward transposes the token-side arrays,
    # which a view of the sequence is not. The layout is refused in one line.
    tpu = dataclasses.replace(cfg, backend="tpu")
    with pytest.raises(ValueError, match=r"layout='tokens' needs backend='gpu', got 'tpu'"):
        columns.column_apply(tpu, "start", x, mat, la, 1)
