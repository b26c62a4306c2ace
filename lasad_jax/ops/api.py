"""Public entry points of the operator: argument checks, then dispatch on `impl`.

Parallel forms take `q, k: [batch, T, heads, Dk]`, `v: [batch, T, heads, Dv]`; slots
`0..num_prefix-1` are prefix memory and the `T - num_prefix` image tokens fill a grid of
`width` columns in raster order (the last row may be partial). They return q's dtype.
Dtypes (docs/operator.md, "Numerics"): the reference casts q, k, v to float32; the
chunked form multiplies in the input dtype with float32 accumulation and keeps its states
in float32; the Pallas form too, except that for bfloat16 inputs it stores the column
states between its kernels in bfloat16 (`pallas.chunked.state_storage`).

Precision: the float32 matmuls of the XLA forms (the whole reference; the chunked form's
state reads, column smoothing and prefix read; the decoding steps) run at JAX's default
matmul precision, which is full float32 on CPU but bfloat16 passes on TPU and may be TF32
on GPU. Nothing here raises it, because its cost on a device is unmeasured; a caller who
needs float32 products there sets `jax_default_matmul_precision="highest"`, as the device
tests do. The Pallas kernels pick theirs from the input dtype (`pallas.precision`).

`impl` (docs/operator.md, "Implementations"):
* `"reference"`: the quadratic masked form, `O(T^2)`; the spec in code.
* `"chunked"`: the chunkwise-parallel form (`ops/chunked.py`), `O(T)`: every chunk's
  intra-chunk products, chunk sums and inter-chunk reads at once, a short pass over the
  chunk-boundary states in between.
* `"pallas"`: the same split as fused Pallas kernels (`lasad_jax.ops.pallas`), `lasad`
  variant only; TPU and GPU, interpret mode on CPU.
* `"auto"`: `select_impl`'s choice for the platform and length (`AUTO_TABLE`).

Decoding forms (`*_decode_init`, `*_decode_step`) feed one slot at a time through a
fixed-size state (`ops.decode`; docs/decoding.md), in XLA; the `lasad` step's column
update also has a fused GPU kernel (`decode_impl="pallas"`, `ops.pallas.decode`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lasad_jax.ops import decode
from lasad_jax.ops.chunked import chunked_attention, defaults
from lasad_jax.ops.platform import target_platform
from lasad_jax.ops.reference import masked_attention
from lasad_jax.ops.validation import (
    check_choice,
    check_decay,
    check_float_array,
    check_float_dtype,
    check_int,
    check_positive_float,
    check_qkv,
)

IMPLS = ("auto", "reference", "chunked", "pallas")

class Auto(NamedTuple):
    """One row of `AUTO_TABLE`: on `platform` ("*": any), up to `max_tokens` slots, run
    `impl` with `chunk_size` tokens per chunk (`None`: `ops.chunked.defaults()`). A caller's
    own `chunk_size` wins over the row's."""

    platform: str
    max_tokens: float
    impl: str
    chunk_size: int | None = None


# impl="auto": the first row that matches the platform and T wins. The one place where
# measurements choose an implementation and its chunk (docs/operator.md, "Implementations
# and the impl switch"; the chunked form's other per-platform parameters are
# `ops.chunked.DEFAULTS`). Today: the chunkwise-parallel XLA form everywhere. On CPU that
# is measured (benchmarks/RESULTS.md, "Operator scaling, CPU": faster than the quadratic
# reference from T = 4096, equal below, where a single chunk is the masked form). On GPU
# and TPU nothing else has been timed since the kernels were rebuilt: a row for
# `impl="pallas"` (with the chunk it was fastest at) enters for a platform and range of T
# once `benchmarks/kernels.py` (run by benchmarks/device_check.sh) shows it faster than the
# XLA form there, cited from benchmarks/RESULTS.md; `benchmarks/auto_table.py` reads those
# measurements and prints the rows they support. The kernels the Pallas split replaced
# lost to the XLA form on an H200 (2026-12-04; RESULTS.md, "Before").
AUTO_TABLE: tuple[Auto, ...] = (Auto("*", float("inf"), "chunked"),)


def select_impl(platform: str, num_tokens: int) -> Auto:
    """The `AUTO_TABLE` row `impl="auto"` follows for a platform ("cpu", "gpu", "tpu") and
    T: its `impl` and `chunk_size`."""
    for row in AUTO_TABLE:
        if row.platform in ("*", platform) and num_tokens <= row.max_tokens:
            return row
    return Auto("*", float("inf"), "chunked")


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
        auto = select_impl(target_platform(), t)
        if auto.impl == "pallas" and variant != "lasad":
            # The table's rows are timings of `lasad`; the kernels compute its mask only,
            # so the other variants take the chunked form, at the caller's chunk or the
            # form's own default: the row's chunk was tuned for the kernels, which hold no
            # C x C scores, and could be too long for the XLA form.
            impl = "chunked"
        else:
            impl = auto.impl
            chunk_size = auto.chunk_size if chunk_size is None else chunk_size
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
    chunked and Pallas forms, rounded down to whole grid rows; below `width`, up to one
    row) trades intra-chunk matmul work
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


def _check_step(state: Any, kind: type, init: str, q, k, v, num_prefix) -> tuple[int, int]:
    """Checks one decoding slot against its state (a `kind` made by `init`); returns
    (heads, num_prefix)."""
    if not isinstance(state, kind):
        raise ValueError(f"state must be the {kind.__name__} that {init} returns, got "
                         f"{type(state).__name__}")
    b, _, h, dk, dv = check_qkv(q, k, v, token_axis=False)
    want = state.dims
    if (b, h, dk, dv) != want:
        raise ValueError(
            f"q/k/v of shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)} do not match "
            f"the state's [batch, heads, Dk, Dv] = {want}"
        )
    return h, check_int("num_prefix", num_prefix, minimum=0)


def _check_init(batch, heads, dk, dv, dtype, width=1):
    for name, val in (("batch", batch), ("heads", heads), ("dk", dk), ("dv", dv), ("width", width)):
        check_int(name, val, minimum=1)
    check_float_dtype("dtype", dtype)


def lasad_decode_init(batch: int, heads: int, dk: int, dv: int, width: int,
                      dtype: Any = jnp.float32, *, prefix_slots: int = 1,
                      kv_dtype: Any = None) -> decode.LasadState:
    """Empty LASAD decoding state for a grid of `width` columns: `width * Dk * Dv +
    (2 * width + prefix_slots) * (Dk + Dv)` numbers per batch element and head (one
    state per column, and the raw keys and values of two grid rows and of up to
    `prefix_slots` prefix slots; docs/decoding.md).

    Keep `dtype` float32: the column states are sums over the whole image (bfloat16
    storage costs about 5e-3 of the largest output, docs/decoding.md). `kv_dtype`
    (default: `dtype`) stores the raw keys and values; the input dtype loses nothing.
    """
    _check_init(batch, heads, dk, dv, dtype, width)
    check_int("prefix_slots", prefix_slots, minimum=0)
    kv_dtype = dtype if kv_dtype is None else check_float_dtype("kv_dtype", kv_dtype)
    return decode.lasad_init(batch, heads, dk, dv, width, dtype, prefix_slots=prefix_slots,
                             kv_dtype=kv_dtype)


DECODE_IMPLS = ("auto", "xla", "pallas")

# decode_impl="auto": the first row whose platform matches ("*": any) picks the `lasad`
# decoding step. Today the XLA step everywhere: the fused kernel (`ops.pallas.decode`,
# GPU) compiles for an H200 and moves under half of the XLA step's bytes per token there
# (benchmarks/RESULTS.md, "Compiled for an H200 without one"), but nothing has timed it;
# a ("gpu", "pallas") row enters once benchmarks/sampling.py --decode_impls xla pallas (a
# stage of benchmarks/device_check.sh) shows it faster on a GPU.
DECODE_AUTO_TABLE: tuple[tuple[str, str], ...] = (("*", "xla"),)


def select_decode_impl(platform: str) -> str:
    """The `lasad` decoding step `decode_impl="auto"` runs on a platform."""
    return next((impl for p, impl in DECODE_AUTO_TABLE if p in ("*", platform)), "xla")


def lasad_decode_step(state: decode.LasadState, q: jax.Array, k: jax.Array, v: jax.Array, *,
                      row_decay: jax.Array, col_decay: jax.Array, num_prefix: int = 0,
                      impl: str = "auto", norm_eps: float | None = None,
                      out_scale: jax.Array | None = None):
    """Consumes the next slot (`q, k: [batch, heads, Dk]`, `v: [batch, heads, Dv]`) and
    returns `(o, new_state)`, `o: [batch, heads, Dv]` in q's dtype. Per token it reads
    and writes one column state and reads two grid rows of keys and values, wherever the
    token lies in the image.

    `impl` (`DECODE_IMPLS`): "xla", "pallas" (the column update and every read as one
    fused kernel, `ops.pallas.decode`: GPU, with Dk and Dv powers of two >= 16, or the
    interpreter on CPU) or "auto" (`select_decode_impl`).

    `norm_eps`: when given, `o` comes RMS-normalized over its `Dv` features per head,
    `o / sqrt(mean(o^2) + norm_eps)` in float32 before the cast (the LASAD mixer's head
    norm). `out_scale` (`[batch, heads, Dv]`, any float dtype): when given, multiplies
    `o` after the norm, in float32 before the cast (the mixer's head-norm weight times
    its output gate). The fused kernel does both on chip, which saves the sampler a
    kernel per layer and token for each."""
    h, num_prefix = _check_step(state, decode.LasadState, "lasad_decode_init", q, k, v,
                                num_prefix)
    if norm_eps is not None:
        norm_eps = check_positive_float("norm_eps", norm_eps)
    if num_prefix > state.prefix_slots:
        raise ValueError(f"num_prefix={num_prefix} is more than the state has room for "
                         f"(prefix_slots={state.prefix_slots}); pass "
                         f"prefix_slots={num_prefix} to lasad_decode_init")
    if out_scale is not None:
        check_float_array("out_scale", out_scale, 3, "[batch, heads, Dv]")
    if out_scale is not None and tuple(out_scale.shape) != tuple(v.shape):
        raise ValueError(f"out_scale must have v's shape [batch, heads, Dv] = "
                         f"{tuple(v.shape)}, got {tuple(out_scale.shape)}")
    check_choice("impl", impl, DECODE_IMPLS)
    platform = target_platform()
    impl = select_decode_impl(platform) if impl == "auto" else impl
    update = decode.xla_token_update
    if impl == "pallas":
        if platform not in ("gpu", "cpu"):
            raise ValueError(f"impl='pallas' (the model's decode_impl) has a GPU (Triton) "
                             f"kernel only; on {platform!r} use 'xla' (or 'auto')")
        from lasad_jax.ops.pallas.decode import token_update  # Pallas imports are not free

        update = functools.partial(token_update, interpret=platform == "cpu")
    return decode.lasad_step(state, q, k, v, num_prefix=num_prefix,
                             log_row=check_decay("row_decay", row_decay, h),
                             log_col=check_decay("col_decay", col_decay, h),
                             token_update=update,
                             norm_eps=None if norm_eps is None else float(norm_eps),
                             out_scale=out_scale)


def lasad_row_decode_init(batch: int, heads: int, dk: int, dv: int, width: int,
                          dtype: Any = jnp.float32) -> decode.LasadRowState:
    """Empty `lasad_row` decoding state: `4 * Dk * Dv` numbers per batch element and head."""
    _check_init(batch, heads, dk, dv, dtype, width)
    return decode.lasad_row_init(batch, heads, dk, dv, width, dtype)


def lasad_row_decode_step(state: decode.LasadRowState, q: jax.Array, k: jax.Array, v: jax.Array,
                          *, row_decay: jax.Array, col_decay: jax.Array, num_prefix: int = 0):
    """As `lasad_decode_step`, for `lasad_row_attention`."""
    h, num_prefix = _check_step(state, decode.LasadRowState, "lasad_row_decode_init", q, k, v,
                                num_prefix)
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
    h, num_prefix = _check_step(state, decode.LinearState, "linear_1d_decode_init", q, k, v,
                                num_prefix)
    return decode.linear_step(state, q, k, v, log_decay=check_decay("decay", decay, h),
                              num_prefix=num_prefix)


linear_decode_init = linear_1d_decode_init


def linear_decode_step(state: decode.LinearState, q: jax.Array, k: jax.Array, v: jax.Array,
                       *, num_prefix: int = 0):
    """As `lasad_decode_step`, for `linear_attention`."""
    h, num_prefix = _check_step(state, decode.LinearState, "linear_decode_init", q, k, v,
                                num_prefix)
    return decode.linear_step(state, q, k, v, log_decay=jnp.zeros((h,), jnp.float32),
                              num_prefix=num_prefix)
