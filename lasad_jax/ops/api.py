"""Public entry points of the operator: argument checks, then dispatch on `impl`.

Parallel forms take `q, k: [batch, T, heads, Dk]`, `v: [batch, T, heads, Dv]`; slots
`0..num_prefix-1` are prefix memory and the `T - num_prefix` image tokens fill a grid of
`width` columns in raster order (the last row may be partial). They return q's dtype;
matmuls run in the input dtype with float32 accumulation, states are float32
(docs/operator.md, "Numerics").

`impl` (docs/operator.md, "Implementations"):
* `"reference"`: the quadratic masked form, `O(T^2)`; the spec in code.
* `"chunked"`: the chunkwise-parallel form (`ops/chunked.py`), `O(T)`: every chunk's
  intra-chunk products, chunk sums and inter-chunk reads at once, a short pass over the
  chunk-boundary states in between.
* `"pallas"`: the same split as fused Pallas kernels (`lasad_jax.ops.pallas`), `lasad`
  variant only; TPU and GPU, interpret mode on CPU.
* `"auto"`: `select_impl`'s choice for the platform and length (`AUTO_TABLE`).

`lasad_decode_step` has its own switch, `DECODE_IMPLS`: `"xla"` (`ops.decode`), `"pallas"`
(the fused one-kernel step, `ops.pallas.decode`) and `"auto"` (`DECODE_AUTO_TABLE`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lasad_jax.ops import decode
from lasad_jax.ops.chunked import chunked_attention, defaults
from lasad_jax.ops.reference import masked_attention
from lasad_jax.ops.validation import check_choice, check_decay, check_int, check_qkv

IMPLS = ("auto", "reference", "chunked", "pallas")

# impl="auto": (platform, longest T for which the choice holds, impl), first match wins.
# The one place where measurements choose an implementation (docs/operator.md,
# "Implementations and the impl switch"; the chunked form's own per-platform parameters
# are `ops.chunked.DEFAULTS`). Today: the chunkwise-parallel XLA form everywhere. On CPU
# that is measured (benchmarks/RESULTS.md, "Operator scaling, CPU": faster than the
# quadratic reference from T = 4096, equal below, where a single chunk is the masked
# form). On GPU and TPU nothing else has been timed since the kernels were rebuilt: the
# Pallas split (`impl="pallas"`) enters a row here for a platform and range of T once
# `benchmarks/kernels.py` (run by benchmarks/device_check.sh) shows it faster than the XLA
# form there, cited from benchmarks/RESULTS.md. The kernels it replaced lost to the XLA
# form on an H200 (2026-12-04; RESULTS.md, "Before").
AUTO_TABLE: tuple[tuple[str, float, str], ...] = (("*", float("inf"), "chunked"),)


DECODE_IMPLS = ("auto", "xla", "pallas")

# impl="auto" for `lasad_decode_step`: (platform, impl), first match wins. The fused
# Pallas step is exact (tests/ops/test_pallas_decode.py) but on an H200 (2026-12-04,
# `benchmarks/decode_step.py --impls xla pallas`) no faster than the XLA step: 4 us slower
# per token at batch 1, within 0.5% at batch 8 and 64. It enters here for a platform once
# that benchmark shows it faster there. On CPU Pallas only interprets.
DECODE_AUTO_TABLE: tuple[tuple[str, str], ...] = (("*", "xla"),)


def select_decode_impl(platform: str) -> str:
    """The decoding step `impl="auto"` runs on a platform ("cpu", "gpu", "tpu")."""
    for plat, impl in DECODE_AUTO_TABLE:
        if plat in ("*", platform):
            return impl
    return "xla"


def select_impl(platform: str, num_tokens: int) -> str:
    """The implementation `impl="auto"` runs for a platform ("cpu", "gpu", "tpu") and T."""
    for plat, max_t, impl in AUTO_TABLE:
        if plat in ("*", platform) and num_tokens <= max_t:
            return impl
    return "chunked"


def _parallel(variant, q, k, v, *, width, num_prefix, impl, chunk_size, **decays) -> jax.Array:
    """Checks every argument, then runs `impl`. `decays` maps each decay argument's public
    name to its value, in (row, column) order; missing ones mean no decay."""
    b, t, h, dk, dv = check_qkv(q, k, v, token_axis=True)
    if t < 1:
        raise ValueError(f"q, k, v must hold at least one slot (T = q.shape[1] >= 1), got T = {t}")
    width = check_int("width", width, minimum=1)
    num_prefix = check_int("num_prefix", num_prefix, minimum=0)
    if num_prefix > t:
        raise ValueError(f"num_prefix must be <= T = {t} (q.shape[1]), got {num_prefix}")
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    logs = [check_decay(name, value, h) for name, value in decays.items()]
    no_decay = jnp.zeros((h,), jnp.float32)
    log_row, log_col = (logs[0], logs[-1]) if logs else (no_decay, no_decay)
    check_choice("impl", impl, IMPLS)
    if impl == "pallas" and variant != "lasad":
        raise ValueError(f"impl='pallas' has kernels for the 'lasad' variant only; use "
                         f"impl='chunked' (or 'auto') for {variant!r}")
    if impl == "auto":
        impl = select_impl(jax.default_backend(), t)
    kw = dict(width=width, num_prefix=num_prefix, log_row=log_row, log_col=log_col)
    if impl == "reference":
        out = masked_attention(variant, q, k, v, **kw)
    elif impl == "pallas":
        from lasad_jax.ops.pallas import pallas_attention  # Pallas imports are not free

        out = pallas_attention(q, k, v, chunk_size=chunk_size or defaults().chunk_size, **kw)
    else:
        out = chunked_attention(variant, q, k, v, chunk_size=chunk_size, **kw)
    return out.astype(q.dtype)


def lasad_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    row_decay: jax.Array,
    col_decay: jax.Array,
    num_prefix: int = 0,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """LASAD: image key `j` weighs `row_decay^(r_i - r_j) * col_decay^|c_i - c_j|` for query `i`.

    `row_decay`, `col_decay`: `[heads]` in (0, 1]. `chunk_size` (tokens per chunk of the
    chunked and Pallas forms, rounded down to whole rows) trades intra-chunk matmul work
    (grows with it) against the chunk-boundary states (shrink with it); `None` uses the
    platform's measured default (`ops.chunked.defaults`).
    """
    return _parallel("lasad", q, k, v, width=width, num_prefix=num_prefix, impl=impl,
                     chunk_size=chunk_size, row_decay=row_decay, col_decay=col_decay)


def lasad_row_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    row_decay: jax.Array,
    col_decay: jax.Array,
    num_prefix: int = 0,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """LASAD-row: `row_decay^(r_i - r_j)` across rows (column ignored), `col_decay^(c_i - c_j)`
    inside a row. Its decoding state is a few `Dk x Dv` matrices whatever the width."""
    return _parallel("lasad_row", q, k, v, width=width, num_prefix=num_prefix, impl=impl,
                     chunk_size=chunk_size, row_decay=row_decay, col_decay=col_decay)


def linear_1d_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    decay: jax.Array,
    num_prefix: int = 0,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """1D decay in raster order (RetNet / Lightning style): `decay^(i - j)` between image
    tokens, the baseline LASAD replaces. `decay`: `[heads]` in (0, 1]."""
    return _parallel("linear_1d", q, k, v, width=1, num_prefix=num_prefix, impl=impl,
                     chunk_size=chunk_size, decay=decay)


def linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    num_prefix: int = 0,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """Causal linear attention with no decay (every earlier slot weighs 1)."""
    return _parallel("linear", q, k, v, width=1, num_prefix=num_prefix, impl=impl,
                     chunk_size=chunk_size)


# ----------------------------------------------------------------------------- decoding


def _check_step(state: Any, q, k, v, num_prefix) -> tuple[int, int]:
    """Checks one decoding slot against its state; returns (heads, num_prefix)."""
    b, _, h, dk, dv = check_qkv(q, k, v, token_axis=False)
    want = tuple(state.prefix.shape)
    if (b, h, dk, dv) != want:
        raise ValueError(
            f"q/k/v of shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)} do not match "
            f"the state's [batch, heads, Dk, Dv] = {want}"
        )
    return h, check_int("num_prefix", num_prefix, minimum=0)


def _check_init(batch, heads, dk, dv, dtype, width=1):
    for name, val in (("batch", batch), ("heads", heads), ("dk", dk), ("dv", dv), ("width", width)):
        check_int(name, val, minimum=1)
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (float32 recommended), got {dtype}")


def lasad_decode_init(batch: int, heads: int, dk: int, dv: int, width: int,
                      dtype: Any = jnp.float32) -> decode.LasadState:
    """Empty LASAD decoding state for a grid of `width` columns: `(2 * width + 2) * Dk * Dv`
    numbers per batch element and head. Keep `dtype` float32: the states are sums over
    the whole image."""
    _check_init(batch, heads, dk, dv, dtype, width)
    return decode.lasad_init(batch, heads, dk, dv, width, dtype)


def lasad_decode_step(state: decode.LasadState, q: jax.Array, k: jax.Array, v: jax.Array, *,
                      row_decay: jax.Array, col_decay: jax.Array, num_prefix: int = 0,
                      impl: str = "auto"):
    """Consumes the next slot (`q, k: [batch, heads, Dk]`, `v: [batch, heads, Dv]`) and
    returns `(o, new_state)`, `o: [batch, heads, Dv]` in q's dtype.

    `impl` in `DECODE_IMPLS`: "xla", "pallas" (one fused kernel per step; TPU, GPU with
    power-of-two Dk and Dv, interpret mode on CPU) or "auto" (`select_decode_impl`).
    """
    h, num_prefix = _check_step(state, q, k, v, num_prefix)
    logs = dict(log_row=check_decay("row_decay", row_decay, h),
                log_col=check_decay("col_decay", col_decay, h))
    check_choice("impl", impl, DECODE_IMPLS)
    platform = jax.default_backend()
    if impl == "auto":
        impl = select_decode_impl(platform)
    if impl == "xla":
        return decode.lasad_step(state, q, k, v, num_prefix=num_prefix, **logs)
    from lasad_jax.ops.pallas.decode import lasad_step_fused  # Pallas imports are not free

    return lasad_step_fused(state, q, k, v, num_prefix=num_prefix,
                            backend="gpu" if platform == "gpu" else "tpu",
                            interpret=platform == "cpu", **logs)


def lasad_row_decode_init(batch: int, heads: int, dk: int, dv: int, width: int,
                          dtype: Any = jnp.float32) -> decode.LasadRowState:
    """Empty `lasad_row` decoding state: `4 * Dk * Dv` numbers per batch element and head."""
    _check_init(batch, heads, dk, dv, dtype, width)
    return decode.lasad_row_init(batch, heads, dk, dv, width, dtype)


def lasad_row_decode_step(state: decode.LasadRowState, q: jax.Array, k: jax.Array, v: jax.Array,
                          *, row_decay: jax.Array, col_decay: jax.Array, num_prefix: int = 0):
    """As `lasad_decode_step`, for `lasad_row_attention`."""
    h, num_prefix = _check_step(state, q, k, v, num_prefix)
    return decode.lasad_row_step(state, q, k, v, log_row=check_decay("row_decay", row_decay, h),
                                 log_col=check_decay("col_decay", col_decay, h),
                                 num_prefix=num_prefix)


def linear_1d_decode_init(batch: int, heads: int, dk: int, dv: int,
                          dtype: Any = jnp.float32) -> decode.LinearState:
    """Empty decoding state for `linear_1d` and `linear`: `2 * Dk * Dv` numbers per batch
    element and head."""
    _check_init(batch, heads, dk, dv, dtype)
    return decode.linear_init(batch, heads, dk, dv, dtype)


def linear_1d_decode_step(state: decode.LinearState, q: jax.Array, k: jax.Array, v: jax.Array,
                          *, decay: jax.Array, num_prefix: int = 0):
    """As `lasad_decode_step`, for `linear_1d_attention`."""
    h, num_prefix = _check_step(state, q, k, v, num_prefix)
    return decode.linear_step(state, q, k, v, log_decay=check_decay("decay", decay, h),
                              num_prefix=num_prefix)


linear_decode_init = linear_1d_decode_init


def linear_decode_step(state: decode.LinearState, q: jax.Array, k: jax.Array, v: jax.Array,
                       *, num_prefix: int = 0):
    """As `lasad_decode_step`, for `linear_attention`."""
    h, num_prefix = _check_step(state, q, k, v, num_prefix)
    return decode.linear_step(state, q, k, v, log_decay=jnp.zeros((h,), jnp.float32),
                              num_prefix=num_prefix)
