"""The chunkwise-parallel form: exact, linear in the number of rows, parallel over chunks.

This is the training form of docs/operator.md ("Chunkwise-parallel form"), the split of
every fast linear-attention kernel. The image tokens are cut into chunks of about
`chunk_size` tokens; for the 2D variants a chunk is `R` whole grid rows
(`R = chunk_size // width`, at least one), so rows never straddle chunks and one mask of
relative positions serves every chunk. Then, for a step of chunks at once:

1. intra-chunk: the exact masked quadratic form `((q k^T) * D) v` inside each chunk, two
   batched matmuls in the input dtype with float32 accumulation;
2. chunk sums: `S_n = sum_{token in chunk n} a^(tau_end - tau) k v^T` per state column
   (one per grid column for `lasad`, a single one otherwise);
3. state pass: for `lasad` the sums are first smoothed across columns (`T_b S_n`, a
   `w x w` Toeplitz matmul; by linearity this equals smoothing the states), then
   `H_{n+1} = a^(tau_chunk) H_n + T_b S_n`, short and sequential over the chunks only
   (`STATE_PASSES`: a `lax.scan` of elementwise updates, or one lower-triangular
   decay-matrix product over chunks);
4. inter-chunk: a token at decay clock `tau` in chunk `n` adds `a^tau q . H_n(column)`,
   one batched `[G x Dk] @ [Dk x Dv]` matmul per state column.

`chunks_per_step` (0: all) sets how many chunks a step takes. With all of them, steps 1, 2
and 4 are each one batched matmul over every chunk and the only loop is the elementwise
state pass: the shape of flash-linear-attention's chunk kernels and Mamba-2's SSD, what an
accelerator wants. With fewer, a `lax.scan` walks the steps carrying `H` between them, which
bounds the working set; a 2-core CPU is memory-bound and prefers that (docs/operator.md,
"Defaults"). The result is the same either way (tests/ops/test_chunked.py).

Variants share the engine: a chunk is a `[G, S]` block of tokens (`S` state columns),
`tau[g, s]` is a token's decay clock inside its chunk (row offset for the 2D variants,
token offset for `linear_1d`), and a chunk spans `tau_chunk` ticks of the clock. `lasad`:
`G = R` rows, `S = w` columns. `lasad_row`: its state ignores the column across rows, so
`S = 1` and the clock is the row offset. `linear_1d`: `S = 1`, clock = token offset.
`linear`: the same with a decay of 1.

Dtypes: the intra-chunk products and the chunk sums take operands in the input dtype
(bfloat16 in training) with float32 accumulation (`preferred_element_type`); the
decay-weighted scores and the decayed keys are rounded to the input dtype just before
their matmul, as flash-style kernels round P. States are accumulated, passed and read in
float32 (the inter-chunk read is a float32 product: `Dk x Dv` per token, small next to the
intra-chunk work, and the states are sums over many rows). With float32 inputs every
operand is float32, but the products run at JAX's default matmul precision (ops/api.py,
"Precision"): only on CPU, or with `jax_default_matmul_precision="highest"`, does the form
match `reference.masked_attention` to float32 rounding.

Memory: autodiff would keep each chunk's `C x C` scores and the `w x Dk x Dv`
chunk-boundary states for the backward pass (for `lasad` the states alone are
`Dk Dv / R` numbers per token and head at `R = 8`, `D = 64`: eight times q, 2.7 times
q, k and v together).
`REMAT_POLICIES` chooses what the backward keeps of each step (docs/operator.md,
"Memory").
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lasad_jax.ops.decay import decay_mask, smooth_columns
from lasad_jax.ops.platform import target_platform
from lasad_jax.ops.reference import masked_attention

F32 = jnp.float32


class Defaults(NamedTuple):
    """The form's parameters when the caller does not choose them."""

    chunk_size: int  # tokens per chunk (rounded down to whole grid rows, at least one)
    chunks_per_step: int  # chunks in parallel per step; 0: all of them
    # A single chunk (`T <= chunk_size`: the masked form) keeps its `C x C` scores for the
    # backward pass (True) or, like every step of several chunks, follows `remat`.
    keep_single_chunk: bool


# Measured defaults per platform ("*": the others), docs/operator.md "Defaults". CPU (the
# 2-core development machine, benchmarks/RESULTS.md): 1024-token chunks, the best at
# T = 16384 and linear from 1k to 16k tokens ("Chunk size, CPU", "Operator scaling,
# CPU"), one chunk per step, the fastest at every length with the least memory ("Inside
# the chunked form, CPU"). Elsewhere nothing is timed yet: all chunks at once (the
# chunkwise-parallel shape accelerators want) and 1024-token chunks, which keep a 512 px
# image (T = 1025) in one chunk and the chunk-boundary states of a 128-wide grid at
# `Dk Dv / 8` numbers per token and head; benchmarks/device_check.sh sweeps both on a GPU.
# A single chunk keeps its scores on CPU, where recomputing them cost time, and on GPU,
# where LASADGen-L's steps fit with them (benchmarks/gpu_aot.py: at most 63.3 GB on an
# 80 GB H100) and nothing has timed the trade. On TPU (and elsewhere) it recomputes them:
# kept, the float32 scores of every layer made the training step at 512 px (16 rows per
# chip) need 33.2 GB of temporaries on a v4 chip, which has 30.75 (benchmarks/tpu_aot.py;
# RESULTS.md, "The training step on four TPU slices").
DEFAULTS: dict[str, Defaults] = {
    "cpu": Defaults(chunk_size=1024, chunks_per_step=1, keep_single_chunk=True),
    "gpu": Defaults(chunk_size=1024, chunks_per_step=0, keep_single_chunk=True),
    "*": Defaults(chunk_size=1024, chunks_per_step=0, keep_single_chunk=False),
}


def defaults(platform: str | None = None) -> Defaults:
    """The measured defaults for `platform` (default: `platform.target_platform()`)."""
    platform = target_platform() if platform is None else platform
    return DEFAULTS.get(platform, DEFAULTS["*"])


# How the states are passed from chunk to chunk (step 3); both exact.
STATE_PASSES = ("scan", "matmul")
DEFAULT_STATE_PASS = "scan"

# What the backward pass keeps: "none" (autodiff keeps every residual: scores and
# states), "states" (keeps the chunk-boundary states, recomputes the intra-chunk scores),
# "inputs" (keeps q, k, v and the decays only; recomputes the whole forward).
REMAT_POLICIES = ("none", "states", "inputs")
DEFAULT_REMAT = "inputs"
_STATES_NAME = "lasad_chunk_states"


class ChunkLayout(NamedTuple):
    tokens: int  # C, tokens per chunk
    groups: int  # G, leading axis of the chunk block
    state_cols: int  # S, number of states carried between chunks
    tau: np.ndarray  # [G, S] decay clock of each token inside its chunk
    chunk_tau: int  # decay clock spanned by one chunk


def chunk_layout(variant: str, width: int, chunk_size: int, num_image: int) -> ChunkLayout:
    """Chooses the chunk shape; chunks never exceed what the sequence needs."""
    if variant in ("lasad", "lasad_row"):
        rows_needed = max(1, -(-num_image // width))
        rows = max(1, min(chunk_size // width, rows_needed))
        tokens = rows * width
        if variant == "lasad":
            tau = np.broadcast_to(np.arange(rows)[:, None], (rows, width))
            return ChunkLayout(tokens, rows, width, tau, rows)
        tau = (np.arange(tokens) // width)[:, None]
        return ChunkLayout(tokens, tokens, 1, tau, rows)
    tokens = max(1, min(chunk_size, num_image))
    return ChunkLayout(tokens, tokens, 1, np.arange(tokens)[:, None], tokens)


def with_prefix(image_fn: Callable, q: jax.Array, k: jax.Array, v: jax.Array,
                num_prefix: int) -> jax.Array:
    """Prefix slots around an image-token operator; returns float32 `[B, T, H, Dv]`.

    Prefix slots are undecayed global memory: among themselves they are causal linear
    attention (`P` slots, the masked form), and every image token reads their sum
    `sum_j k_j v_j^T` with weight 1. `image_fn(q, k, v)` does the image tokens.
    """
    num_image = q.shape[1] - num_prefix
    outs = []
    if num_prefix:
        qp, kp, vp = q[:, :num_prefix], k[:, :num_prefix], v[:, :num_prefix]
        zero = jnp.zeros((q.shape[2],), F32)
        outs.append(masked_attention("linear", qp, kp, vp, width=1, num_prefix=0,
                                     log_row=zero, log_col=zero))
    if num_image:
        qi, ki, vi = q[:, num_prefix:], k[:, num_prefix:], v[:, num_prefix:]
        o = image_fn(qi, ki, vi).astype(F32)
        if num_prefix:
            s_prefix = jnp.einsum("bjhd,bjhe->bhde", kp, vp, preferred_element_type=F32)
            o = o + jnp.einsum("bihd,bhde->bihe", qi.astype(F32), s_prefix)
        outs.append(o)
    return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]


def chunked_attention(
    variant: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    num_prefix: int,
    log_row: jax.Array,
    log_col: jax.Array,
    chunk_size: int | None = None,
    chunks_per_step: int | None = None,
    state_pass: str = DEFAULT_STATE_PASS,
    remat: str = DEFAULT_REMAT,
) -> jax.Array:
    """Same result as `reference.masked_attention`, in time linear in the number of rows;
    returns float32.

    `chunk_size`, `chunks_per_step`: `None` takes `defaults()` of the platform.
    `state_pass` (`STATE_PASSES`) and `remat` (`REMAT_POLICIES`) exist to measure those
    choices (benchmarks/chunk_design.py); the defaults are the measured ones.
    """
    if state_pass not in STATE_PASSES:
        raise ValueError(f"state_pass must be one of {STATE_PASSES}, got {state_pass!r}")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
    default = defaults()
    chunk_size = default.chunk_size if chunk_size is None else chunk_size
    chunks_per_step = default.chunks_per_step if chunks_per_step is None else chunks_per_step
    image = functools.partial(_image_attention, variant, width=width, chunk_size=chunk_size,
                              chunks_per_step=chunks_per_step, state_pass=state_pass,
                              remat=remat, keep_single_chunk=default.keep_single_chunk,
                              dtype=jnp.dtype(q.dtype))
    log_row, log_col = log_row.astype(F32), log_col.astype(F32)
    return with_prefix(lambda q, k, v: image(q, k, v, log_row, log_col), q, k, v, num_prefix)


def _mm(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """A batched matmul on operands rounded to `dtype` (the input dtype), accumulated in
    float32."""
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=F32)


def _image_attention(variant, q, k, v, log_row, log_col, *, width, chunk_size,
                     chunks_per_step, state_pass, remat, keep_single_chunk, dtype):
    b, num_image, h, dk = q.shape
    dv = v.shape[-1]
    lay = chunk_layout(variant, width, chunk_size, num_image)
    c = lay.tokens
    n = -(-num_image // c)
    per_step = n if chunks_per_step in (0, None) or chunks_per_step >= n else chunks_per_step
    steps = -(-n // per_step)
    pad = steps * per_step * c - num_image
    if pad:
        # Padding sits after the last real token, so causality already hides it; zeros
        # keep it out of the states as well.
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    # Chunk-major blocks [steps, chunks per step, B, H, C, D]: every matmul of a step is
    # batched over (chunks, B, H) or (chunks, B, H, S). The blocks are then viewed in
    # float32; each product rounds them back to `dtype`, which is exact. Why: each of q, k, v
    # feeds several products, and autodiff adds the cotangents of a value's uses in that
    # value's dtype. Added in bfloat16, rounding every partial sum, the q gradient's error
    # doubled (T = 16384, no decay); added in float32 it is rounded once, at the layout
    # transpose back (docs/operator.md, "Numerics").
    qc, kc, vc = (x.reshape(b, steps, per_step, c, h, -1).transpose(1, 2, 0, 4, 3, 5)
                  .astype(F32) for x in (q, k, v))
    body = functools.partial(_step, variant, lay, width, state_pass, dtype)
    if n == 1 and keep_single_chunk:
        # One chunk is the masked form: no states, and its only residual is the `C x C`
        # scores, which the reference keeps too (`Defaults.keep_single_chunk`).
        remat = "none"
    if remat == "inputs":
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    elif remat == "states":
        body = jax.checkpoint(
            body, policy=jax.checkpoint_policies.save_only_these_names(_STATES_NAME))
    if steps == 1:
        _, out = body(None, (qc[0], kc[0], vc[0]), log_row, log_col)
        out = out[None]
    else:
        s = lay.state_cols
        carry = jnp.zeros((b, h, s, dk, dv), F32)
        _, out = jax.lax.scan(lambda st, x: body(st, x, log_row, log_col), carry, (qc, kc, vc))
    out = out.reshape(steps * per_step, b, h, c, dv)
    return out.transpose(1, 0, 3, 2, 4).reshape(b, -1, h, dv)[:, :num_image]


def _step(variant, lay: ChunkLayout, width: int, state_pass: str, dtype, carry, x, log_row,
          log_col):
    """One step of `P` chunks: `carry` is `H` entering the first (`[B, H, S, Dk, Dv]`, or
    `None` for the first step of a single-step run); returns `(H after the last, out)`."""
    qc, kc, vc = x  # [P, B, H, C, D]
    p, b, h, c, _ = qc.shape
    g, s = lay.groups, lay.state_cols
    # 1. Intra-chunk. A chunk starts on a row boundary (2D variants), so one mask of
    #    relative positions serves every chunk.
    mask = decay_mask(variant, c, 0, width, log_row, log_col)  # [H, C, C]
    scores = _mm("pbhid,pbhjd->pbhij", qc, kc, dtype) * mask
    out = _mm("pbhij,pbhje->pbhie", scores, vc, dtype)
    last = carry is None  # a single step: no chunk after the last one reads its sums
    if p == 1 and last:
        return None, out

    log_a = log_row if variant != "linear" else jnp.zeros_like(log_row)
    la = log_a[:, None, None, None]  # [H, 1, 1, 1] against [S, G, 1] clocks
    tau = jnp.asarray(lay.tau.T, F32)[..., None]  # [S, G, 1]; products are [H, S, G, 1]

    def by_column(x):  # [P', B, H, C, D] -> [P', B, H, S, G, D]
        return x.reshape(*x.shape[:3], g, s, x.shape[-1]).swapaxes(3, 4)

    # 2. Chunk sums, each key decayed to its chunk's end.
    kk, vv = (kc[:-1], vc[:-1]) if last else (kc, vc)
    k_end = by_column(kk) * jnp.exp((lay.chunk_tau - tau) * la)
    sums = _mm("pbhsgd,pbhsge->pbhsde", k_end, by_column(vv), dtype)
    # 3. Smoothing across columns, then the state pass: `inclusive[i]` sums chunks <= i of
    #    this step, decayed to the end of chunk i.
    if variant == "lasad":
        sums = smooth_columns(sums, log_col)
    inclusive = pass_states(sums, lay.chunk_tau * log_a, state_pass)
    # The states entering each chunk: the carry decayed over the chunks before it, plus
    # this step's earlier chunks. A single step skips chunk 0, which reads nothing.
    if last:
        states = inclusive
        new_carry = None
    else:
        decay = jnp.exp(lay.chunk_tau * log_a)[:, None, None, None]  # [H, 1, 1, 1]
        lead = jnp.exp(jnp.arange(p, dtype=F32)[:, None] * lay.chunk_tau * log_a)  # [P, H]
        entering = lead[:, None, :, None, None, None] * carry[None]
        states = entering + jnp.concatenate([jnp.zeros_like(inclusive[:1]), inclusive[:-1]])
        new_carry = decay * states[-1] + sums[-1]
    states = checkpoint_name(states, _STATES_NAME)
    # 4. Inter-chunk: each query decayed back to its chunk's start.
    qq = qc[1:] if last else qc
    q_start = by_column(qq) * jnp.exp(tau * la)
    # The read multiplies float32 queries and states: the states are sums over many rows,
    # and rounding them to bfloat16 here took the q gradient's error from 5.5e-3 to 8.6e-3
    # of its largest magnitude (T = 16384, no decay; docs/operator.md, "Numerics"). That
    # gain holds where float32 matmuls are float32 (CPU, or "highest" precision); at the
    # default precision a TPU multiplies in bfloat16 passes and a GPU may use TF32.
    inter = jnp.einsum("pbhsgd,pbhsde->pbhsge", q_start, states, preferred_element_type=F32)
    inter = inter.swapaxes(3, 4).reshape(*qq.shape[:4], -1)
    if last:
        return None, jnp.concatenate([out[:1], out[1:] + inter], axis=0)
    return new_carry, out + inter


def pass_states(sums: jax.Array, log_decay: jax.Array, method: str) -> jax.Array:
    """Inclusive decayed prefix sum over the leading chunk axis of `sums: [N, B, H, ...]`:
    `out[i] = sum_{m <= i} exp((i - m) log_decay) sums[m]`, `log_decay: [H]`."""
    n = sums.shape[0]
    if method == "matmul":
        i = jnp.arange(n, dtype=F32)
        dist = i[:, None] - i[None, :]
        expo = jnp.where(dist >= 0, dist, 0.0)[None] * log_decay[:, None, None]
        tri = jnp.where(dist >= 0, jnp.exp(expo), 0.0)  # [H, N, N]
        flat = sums.reshape(*sums.shape[:3], -1)
        return jnp.einsum("hij,jbhf->ibhf", tri, flat).reshape(sums.shape)
    decay = jnp.exp(log_decay).reshape(-1, *([1] * (sums.ndim - 3)))  # against [B, H, ...]

    def step(carry, x):
        carry = decay * carry + x
        return carry, carry

    return jax.lax.scan(step, jnp.zeros_like(sums[0]), sums)[1]
