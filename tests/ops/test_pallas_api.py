"""`impl="pallas"`: the chunkwise-parallel form with Pallas kernels, end to end, against the
quadratic reference; its lowering for CUDA (Triton) and TPU (Mosaic) on this CPU machine.

On CPU `impl="pallas"` runs the TPU kernels in interpret mode; the GPU (Triton) kernels run
in the generic interpreter through `pallas.lasad_pallas(backend="gpu")`, whose padding to
Triton's power-of-two sizes (rows, columns, features) is thereby checked to be exact.
Cases: a partial last row, widths 5 and 6 (not powers of two), Dk = 4 != Dv = 6,
0 / 1 prefix slots, one chunk and several, decays of exactly 1.0 next to sharp ones.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax import ops
from lasad_jax.ops.pallas import chunked as chunked_pallas
from lasad_jax.ops.pallas import lasad_pallas
from tests.ops.helpers import (COL_DECAY, ROW_DECAY, decay_kwargs, lasad_reference_fn,
                               random_qkv, rel_err, triton_lowering, vjp_at)

LOG_ROW = jnp.log(jnp.asarray(ROW_DECAY))
LOG_COL = jnp.log(jnp.asarray(COL_DECAY))


@pytest.mark.parametrize("width, image_tokens, num_prefix, chunk_size", [
    (5, 23, 1, None),  # one chunk: the intra-chunk kernel alone
    pytest.param(5, 37, 1, 10, marks=pytest.mark.slow),  # 2 rows per chunk, 4 chunks,
    # partial last row, a prefix slot (~9 s in the TPU interpreter)
    pytest.param(6, 30, 0, 6, marks=pytest.mark.slow),  # one row per chunk, no prefix
])
def test_pallas_matches_reference_values_and_gradients(width, image_tokens, num_prefix,
                                                       chunk_size):
    """Through the public API (TPU kernels, interpret mode): values and the five
    gradients (q, k, v, row_decay, col_decay) within 1e-4 of the reference."""
    q, k, v = random_qkv(0, batch=1, tokens=num_prefix + image_tokens)
    decays = decay_kwargs("lasad", width)

    def run(impl, q, k, v, row, col):
        return ops.lasad_attention(q, k, v, width=width, row_decay=row, col_decay=col,
                                   num_prefix=num_prefix, impl=impl, chunk_size=chunk_size)

    args = (q, k, v, decays["row_decay"], decays["col_decay"])
    got, want = run("pallas", *args), run("reference", *args)
    assert rel_err(got, want) < 1e-4

    def loss(impl):
        return lambda *a: jnp.sum(jnp.sin(run(impl, *a)))

    g_pallas = jax.jit(jax.grad(loss("pallas"), argnums=(0, 1, 2, 3, 4)))(*args)
    g_ref = jax.grad(loss("reference"), argnums=(0, 1, 2, 3, 4))(*args)
    for name, a, b in zip(("q", "k", "v", "row_decay", "col_decay"), g_pallas, g_ref):
        assert rel_err(a, b) < 1e-4, name


def _gpu(width: int, num_prefix: int, chunk_size: int, interpret: bool = True):
    def f(q, k, v, lr, lc):
        return lasad_pallas(q, k, v, width=width, num_prefix=num_prefix, log_row=lr,
                            log_col=lc, chunk_size=chunk_size, interpret=interpret,
                            backend="gpu", block_q=16, block_k=16)
    return f


@pytest.mark.parametrize("width, image_tokens, num_prefix, chunk_size", [
    (5, 37, 1, 10),  # 2 rows per chunk (padded to 16), 8 columns per program (3 padding)
    pytest.param(3, 50, 0, 3, marks=pytest.mark.slow),  # one row per chunk: 17 chunks
])
def test_gpu_kernels_match_reference(width, image_tokens, num_prefix, chunk_size):
    """The Triton path in the generic interpreter: values and the five gradients."""
    q, k, v = random_qkv(100 + width, 1, num_prefix + image_tokens)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(width).normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_gpu(width, num_prefix, chunk_size)), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert rel_err(out, ref) < 1e-4
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert rel_err(g, r) < 1e-4, (name, rel_err(g, r))
    assert np.all(np.abs(np.asarray(grads[4])) > 0)  # the decays receive gradient


@pytest.mark.parametrize("num_prefix, image_tokens", [
    (1, 16 * 36 + 5),  # 3 chunks of 16 rows, the last one partial, and a prefix slot
    pytest.param(0, 16 * 48, marks=pytest.mark.slow),  # whole chunks, no prefix
])
def test_gpu_kernels_read_the_sequence_in_place(num_prefix, image_tokens):
    """Width, rows per chunk and feature sizes already powers of two of at least 16: the
    column kernels read q, k, v and write their results as views of the sequence
    (the "tokens" layout, no transposed copies). Values and the five gradients against
    the reference."""
    width, chunk_size, d = 16, 16 * 16, 16
    assert chunked_pallas._column_layout("gpu", width, 16, (d, d))[3] == "tokens"
    rng = np.random.default_rng(num_prefix)
    shape = (2, num_prefix + image_tokens, len(ROW_DECAY), d)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_gpu(width, num_prefix, chunk_size)), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert rel_err(out, ref) < 1e-4
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert rel_err(g, r) < 1e-4, (name, rel_err(g, r))


@pytest.mark.parametrize("width, layout", [(32, "tokens"), (24, "columns")])
def test_tokens_layout_transposes_nothing(monkeypatch, width, layout):
    """Lowered for CUDA (bf16, D = 64, 16 rows per chunk, a prefix slot and a partial last
    chunk): with a power-of-two width the forward+backward program holds no transpose
    at all; with width 24 (padded to 32) XLA transposes q, k, v into column-major chunks
    and the gradients back. Both run the same nine Triton kernels."""
    assert chunked_pallas._column_layout("gpu", width, 16, (64, 64))[3] == layout
    q = jnp.zeros((1, 1 + width * 40 + 5, 2, 64), jnp.bfloat16)
    f = _gpu(width, 1, width * 16, interpret=False)
    grad = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=range(5))
    program = []
    assert triton_lowering(grad, (q, q, q, LOG_ROW[:2], LOG_COL[:2]), monkeypatch,
                           program=program) == 9
    transposes = program[0].count("stablehlo.transpose")
    assert (transposes == 0) == (layout == "tokens"), transposes


def _sequence_ops(program: str, shape: tuple[int, ...]) -> dict[str, int]:
    """How many adds, pads, slices, concatenates and transposes of the lowered program
    produce a sequence-sized array (`shape`, any dtype)."""
    sized = "tensor<" + "x".join(map(str, shape)) + "x"
    found = {}
    for op in ("add", "pad", "slice", "concatenate", "transpose"):
        lines = [ln for ln in program.splitlines() if f"stablehlo.{op} " in ln
                 and sized in ln.split("->")[-1].split(":")[-1]]
        if lines:
            found[op] = len(lines)
    return found


def test_split_without_a_prefix_sums_its_parts_in_the_kernels(monkeypatch):
    """Lowered for CUDA (bf16, D = 64, width 32, 3 whole chunks of 16 rows, no prefix):
    the direct split (`chunked._direct_split`) runs its nine Triton kernels on the
    caller's arrays, and the kernels add the inter-chunk reads to the output and the
    column kernels' gradients to dq, dk and dv themselves: no add, pad, slice,
    concatenate or transpose makes a sequence-sized array. With a prefix slot the split
    is a composition of the kernels, and XLA adds the parts (this check's contrast)."""
    tokens = 32 * 16 * 3

    def lowered(num_prefix: int) -> tuple[int, str]:
        q = jnp.zeros((1, num_prefix + tokens, 2, 64), jnp.bfloat16)
        f = _gpu(32, num_prefix, 32 * 16, interpret=False)
        grad = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=range(5))
        program = []
        kernels = triton_lowering(grad, (q, q, q, LOG_ROW[:2], LOG_COL[:2]), monkeypatch,
                                  program=program)
        return kernels, program[0]

    kernels, program = lowered(0)
    assert kernels == 9
    assert _sequence_ops(program, (1, tokens, 2, 64)) == {}
    kernels, program = lowered(1)
    assert kernels == 9
    assert _sequence_ops(program, (1, 1 + tokens, 2, 64)).get("add", 0) >= 3


# bfloat16 inputs against the float32 reference on the same (rounded) inputs: the
# products round scores and decayed keys to bf16 (2^-9 each), the column states are
# stored in bf16 (rounded once each, `chunked.state_storage`), the output is rounded once.
# Measured on this case (seeds 0-2 and 7, 2026-12-06): output <= 3.6e-3 of its largest
# magnitude, gradients <= 8.6e-3 (log col decay), 5.9e-3 (q, k, v); with float32 states
# 3.6e-3 and 8.2e-3.
BF16_TOL, BF16_GRAD_TOL = 2.0**-7, 2.0**-6


@pytest.mark.slow
def test_bfloat16_inputs():
    width, num_prefix, chunk_size = 5, 1, 10
    q, k, v = random_qkv(7, 1, 1 + 37, jnp.bfloat16)
    args = (q, k, v, LOG_ROW, LOG_COL)
    ct = jnp.asarray(np.random.default_rng(7).normal(size=v.shape), jnp.float32)
    out, grads = vjp_at(jax.jit(_gpu(width, num_prefix, chunk_size)), args, ct)
    ref, ref_grads = vjp_at(lasad_reference_fn(width, num_prefix), args, ct)
    assert out.dtype == jnp.bfloat16 and rel_err(out, ref) < BF16_TOL
    for name, g, r in zip(("q", "k", "v", "log_row", "log_col"), grads, ref_grads):
        assert g.dtype == r.dtype and rel_err(g, r) < BF16_GRAD_TOL, (name, rel_err(g, r))


def _triton_results(text: str) -> list[str]:
    """The result types of the Triton custom calls in a lowered program."""
    return re.findall(r"custom_call @__gpu\$xla\.gpu\.triton\(.*?\) .*?-> (.*)", text)


@pytest.mark.parametrize("dtype, state_dtype, stored", [
    (jnp.bfloat16, None, "bf16"),  # bf16 inputs: bf16 states by default
    (jnp.bfloat16, jnp.float32, "f32"),  # the override
    (jnp.float32, None, "f32"),
])
def test_column_states_are_stored_as_chosen(monkeypatch, dtype, state_dtype, stored):
    """Every array of column states that the kernels pass to each other, forward and
    backward (chunk sums, entering states, their cotangents), is stored in the chosen
    dtype (`chunked.state_storage` by default): read from the Triton calls' result types.
    Shapes: 3 chunks of 16 rows at width 24 (padded to 32), 2 heads, D = 64, so
    `column_outer` writes `[2 chunks * 2 heads, 32, 64, 64]` and the state pass
    `[2, 2, 32, 4096]`."""
    q = jnp.zeros((1, 1 + 24 * 40, 2, 64), dtype)

    def f(q, k, v, lr, lc):
        return lasad_pallas(q, k, v, width=24, num_prefix=1, log_row=lr, log_col=lc,
                            chunk_size=24 * 16, interpret=False, backend="gpu",
                            state_dtype=state_dtype)

    grad = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=range(5))
    program = []
    triton_lowering(grad, (q, q, q, LOG_ROW[:2], LOG_COL[:2]), monkeypatch, program=program)
    results = " ".join(_triton_results(program[0]))
    shapes = ("4x32x64x64", "2x2x32x4096")
    found = {(shape, t) for shape in shapes for t in ("bf16", "f32")
             if f"tensor<{shape}x{t}>" in results}
    # Written: sums and states (forward), the states' cotangent and the sums' (backward).
    assert found == {(shape, stored) for shape in shapes}, found
    assert results.count(f"tensor<4x32x64x64x{stored}>") == 2
    assert results.count(f"tensor<2x2x32x4096x{stored}>") == 2


@pytest.mark.parametrize("bad", ["float16", "int8", "f32"])
def test_state_dtype_names_the_valid_storages(bad):
    q = jnp.zeros((1, 1 + 10, 2, 4), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"state_dtype must be one of \('float32', "
                                         r"'bfloat16'\), got '" + bad):
        lasad_pallas(q, q, q, width=5, num_prefix=1, log_row=LOG_ROW[:2],
                     log_col=LOG_COL[:2], chunk_size=5, interpret=True, state_dtype=bad)


def test_state_storage_follows_the_input_dtype():
    assert chunked_pallas.state_storage(jnp.bfloat16) == jnp.bfloat16
    for dtype in (jnp.float32, jnp.float16):  # float16: its range is too short for sums
        assert chunked_pallas.state_storage(dtype) == jnp.float32


def test_lowers_to_triton_for_cuda(monkeypatch):
    """Forward and backward lower on a CPU-only machine at the 384 px grid width (24) and a
    real head size, bf16. Forward: intra-chunk, chunk sums, state pass, state reads.
    Backward adds dq and dk/dv (intra), one kernel for both of the chunk sums' gradients,
    the reverse state pass, one for both of the state reads'. This checks the
    Pallas-to-Triton-IR lowering only: XLA's Triton compilation (Triton passes, register
    allocation, PTX) needs a GPU build."""
    q = jnp.zeros((1, 1 + 24 * 40, 2, 64), jnp.bfloat16)
    f = _gpu(24, 1, 24 * 16, interpret=False)
    args = (q, q, q, LOG_ROW[:2], LOG_COL[:2])
    assert triton_lowering(f, args, monkeypatch) == 4
    grad = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=range(5))
    assert triton_lowering(grad, args, monkeypatch) == 9


def test_one_chunk_on_gpu_is_the_kernels_alone(monkeypatch):
    """A 256 px training shape (the class slot and 255 image tokens, bf16, D = 64): forward
    and backward on GPU are the three Triton kernels reading and writing the model's
    `[B, T, H, D]` arrays; no op moves q, k, v, o or their gradients around them (no
    transpose, concatenate, pad or slice anywhere in the program)."""
    q = jnp.zeros((2, 256, 2, 64), jnp.bfloat16)
    f = _gpu(16, 1, 1024, interpret=False)
    grad = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=range(5))
    program = []
    assert triton_lowering(grad, (q, q, q, LOG_ROW[:2], LOG_COL[:2]), monkeypatch,
                           program=program) == 3
    ops_used = {op for op in ("transpose", "concatenate", "pad", "slice")
                if f"stablehlo.{op}" in program[0]}
    assert not ops_used, ops_used


def test_lowers_for_tpu():
    """The same program lowers to Mosaic (not a compilation, which needs a TPU)."""
    q = jnp.zeros((1, 1 + 24 * 40, 2, 64), jnp.bfloat16)

    def f(q, k, v, lr, lc):
        return lasad_pallas(q, k, v, width=24, num_prefix=1, log_row=lr, log_col=lc,
                            chunk_size=24 * 16, backend="tpu")

    grad = jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)), argnums=range(5))
    text = jax.jit(grad).trace(q, q, q, LOG_ROW[:2], LOG_COL[:2]).lower(
        lowering_platforms=("tpu",)).as_text()
    assert text.count("custom_call @tpu_custom_call") == 11


def test_pallas_on_gpu_runs_the_triton_kernels(monkeypatch):
    """`impl="pallas"` traced as if on a GPU lowers to Triton kernels (not interpret)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q, k, v = random_qkv(0, 1, 1 + 45)

    def f(q, k, v):
        return ops.lasad_attention(q, k, v, width=5, row_decay=jnp.asarray(ROW_DECAY),
                                   col_decay=jnp.asarray(COL_DECAY), num_prefix=1,
                                   impl="pallas", chunk_size=20)

    assert triton_lowering(f, (q, k, v), monkeypatch) == 4


def test_pallas_other_variants_say_what_to_use():
    q, k, v = random_qkv(0, batch=1, tokens=9)
    with pytest.raises(ValueError, match="'lasad' variant only; use impl='chunked'"):
        ops.linear_attention(q, k, v, impl="pallas")


def test_auto_does_not_pick_pallas_where_it_was_not_timed_faster():
    assert {row.impl for row in ops.AUTO_TABLE} == {"chunked"}
    assert np.all([ops.select_impl(p, t).impl == "chunked" for p in ("cpu", "gpu", "tpu")
                   for t in (256, 16384)])


def test_auto_pallas_row_runs_only_lasad_on_the_kernels(monkeypatch):
    """The kernels compute `lasad`'s mask: where a row says "pallas", the other variants
    run the chunked form and stay exact (the row is a timing of `lasad`), at the XLA
    form's default chunk, not the row's (tuned for kernels that hold no C x C scores)."""
    from lasad_jax.ops import api

    monkeypatch.setattr(api, "AUTO_TABLE", (api.Auto("*", float("inf"), "pallas", 8),))
    seen, original = [], api.chunked_attention

    def chunked(variant, *args, chunk_size, **kwargs):
        seen.append((variant, chunk_size))
        return original(variant, *args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(api, "chunked_attention", chunked)
    q, k, v = random_qkv(0, batch=1, tokens=1 + 19)
    for variant in ("lasad", "lasad_row", "linear_1d", "linear"):
        fn = getattr(ops, f"{variant}_attention")
        kw = decay_kwargs(variant, 4)
        got = fn(q, k, v, num_prefix=1, **kw)  # impl="auto"
        want = fn(q, k, v, num_prefix=1, impl="reference", **kw)
        assert rel_err(got, want) < 1e-5, variant
    assert seen == [(name, None) for name in ("lasad_row", "linear_1d", "linear")]
    ops.linear_attention(q, k, v, num_prefix=1, chunk_size=6)  # the caller's chunk stays
    assert seen[-1] == ("linear", 6)


def test_auto_follows_the_first_matching_row_and_its_chunk(monkeypatch):
    """A row's platform and length bound pick it; its chunk size is used unless the caller
    gives one."""
    from lasad_jax.ops import api

    table = (api.Auto("gpu", 1024, "pallas", 2048), api.Auto("cpu", 64, "chunked", 8),
             api.Auto("*", float("inf"), "chunked"))
    monkeypatch.setattr(api, "AUTO_TABLE", table)
    assert api.select_impl("gpu", 1024) == table[0]
    assert api.select_impl("gpu", 1025) == table[2] == api.select_impl("tpu", 10)
    assert api.select_impl("cpu", 64).chunk_size == 8
    seen, original = [], api.chunked_attention

    def chunked(*args, chunk_size, **kwargs):
        seen.append(chunk_size)
        return original(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(api, "chunked_attention", chunked)
    q, k, v = random_qkv(0, batch=1, tokens=1 + 40)
    decays = decay_kwargs("lasad", 5)
    base = ops.lasad_attention(q, k, v, num_prefix=1, **decays)  # cpu, T = 41: the 8 row
    ops.lasad_attention(q, k, v, num_prefix=1, chunk_size=20, **decays)
    ops.lasad_attention(q[:, :1], k[:, :1], v[:, :1], num_prefix=1, **decays)
    assert seen == [8, 20, 8]
    want = ops.lasad_attention(q, k, v, num_prefix=1, impl="reference", **decays)
    assert rel_err(base, want) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("num_prefix", [1, 0], ids=["prefix", "direct"])
def test_bfloat16_states_with_decays_of_one_over_16k_tokens(num_prefix, monkeypatch):
    """The numerically hardest case (both decays 1.0: every state sums all earlier
    tokens; `tests/training/test_reliability.py` holds the XLA form to it) through the
    Pallas split with its default bf16 column states, 2048-token chunks (8 chunks of 16
    rows at width 128): output and the five gradients within 2^-7 of their largest
    magnitude against the float32 chunked form on the same values. Measured (GPU kernels
    interpreted, 2026-12-06): output 3.0e-3, dq 7.4e-3 (7.4e-3 with float32 states too),
    the others <= 5.2e-3. Without the prefix slot the split is the direct one, whose
    kernels sum the intra- and inter-chunk parts before rounding (`chunked._direct_split`):
    output 3.6e-3, dv 6.8e-3, dq 5.9e-3, dk 5.1e-3, the decays' <= 3.0e-3 (2026-12-07).
    The direct split needs whole chunks, so the image is exactly 128 rows: T = 1 + 16384
    with the prefix slot, 16384 without (a 16385th image token would make a ninth,
    one-token chunk, and the composed split would run instead). The intra-chunk kernel
    runs 256-token tiles, not the GPU's default 64: half the interpreter's time (16 s
    instead of 30 s per case on 2 cores), and every error above is the same to two digits
    with either tile (2026-12-07); what this test is about is the column states."""
    width, heads, d = 128, 2, 16
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (1, num_prefix + 128 * width, heads, d))
               .astype(jnp.bfloat16) for kk in keys)
    # Which split each trace of the Pallas form takes: direct without the prefix slot.
    splits, choose = [], chunked_pallas._direct_split

    def spy(*args, **kwargs):
        split = choose(*args, **kwargs)
        splits.append(split is not None)
        return split

    monkeypatch.setattr(chunked_pallas, "_direct_split", spy)
    ones = jnp.ones((heads,), jnp.float32)
    weights = jnp.cos(jnp.arange(d, dtype=jnp.float32))

    def pallas(q, k, v, row, col):
        return lasad_pallas(q, k, v, width=width, num_prefix=num_prefix,
                            log_row=jnp.log(row), log_col=jnp.log(col), chunk_size=2048,
                            interpret=True, backend="gpu", block_q=256, block_k=256)

    def chunked(q, k, v, row, col):
        return ops.lasad_attention(q, k, v, width=width, row_decay=row, col_decay=col,
                                   num_prefix=num_prefix, impl="chunked")

    def run(f, *args):
        def loss(*a):
            return jnp.sum(f(*a).astype(jnp.float32) * weights)
        return jax.jit(lambda *a: (f(*a), jax.grad(loss, argnums=range(5))(*a)))(*args)

    out, grads = run(pallas, q, k, v, ones, ones)
    assert splits and all(direct == (num_prefix == 0) for direct in splits), splits
    with jax.default_matmul_precision("highest"):
        ref, ref_grads = run(chunked, *(x.astype(jnp.float32) for x in (q, k, v)), ones, ones)
    assert out.dtype == jnp.bfloat16 and rel_err(out, ref) <= 2.0**-7
    for name, g, r in zip(("q", "k", "v", "row_decay", "col_decay"), grads, ref_grads):
        assert np.all(np.isfinite(np.asarray(g, np.float32))), name
        assert rel_err(g, r) <= 2.0**-7, (name, rel_err(g, r))
