"""Flash-style masked LASAD as Pallas kernels, with a Pallas backward (`jax.custom_vjp`).

This is the quadratic form of DESIGN.md §1 tiled over (query block, key block) with the
decay mask rebuilt per tile from indices (`masked_kernels.py`), for the short and medium
sequences where one chunk is the whole image (e.g. 256 tokens). Long sequences want the
chunked kernel, which carries per-column states between row chunks.

The custom VJP sits on the kernel layout (`[batch * heads, Tp, D]`, log decays per
`batch * head`); the head transpose, padding, dtype casts and the tiling of the per-head
log decays over the batch are ordinary JAX outside it, so autodiff sums the decay
gradients over the batch and chains `d a = d(log a) / a` for callers that pass decays.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plt

from lasad_jax.ops.pallas import masked_kernels as kern
from lasad_jax.ops.pallas.precision import precision as matmul_precision

BACKENDS = ("tpu", "gpu")
# Rows and columns are derived in float32 inside the kernels; exact below this many slots.
MAX_TOKENS = 2**22


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: it is a `nondiff_argnums` of the VJP)."""

    width: int
    num_prefix: int
    block_q: int
    block_k: int
    interpret: bool
    backend: str
    precision: lax.Precision  # of every matmul in the kernels


def _call(cfg: _Config, kernel, grid, in_specs, out_specs, out_shape):
    """`pl.pallas_call` with the backend's compiler params and interpreter."""
    if cfg.backend == "tpu":
        # Every grid point writes its own output blocks: both axes can be split over cores.
        params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
        interpret = pltpu.InterpretParams() if cfg.interpret else False
    else:
        params = plt.CompilerParams(num_warps=4, num_stages=2)
        interpret = cfg.interpret
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, compiler_params=params, interpret=interpret)


def _blocked(block: int, depth: int) -> pl.BlockSpec:
    """The grid's own block along the sequence."""
    return pl.BlockSpec((None, block, depth), lambda b, n: (b, n, 0))


def _whole(length: int, depth: int) -> pl.BlockSpec:
    """The whole sequence of one (batch, head): the kernel loops over it with `pl.ds`."""
    return pl.BlockSpec((None, length, depth), lambda b, n: (b, 0, 0))


_LOG_SPEC = pl.BlockSpec((None, 1, 1), lambda b, n: (b, 0, 0))


def _forward(cfg: _Config, q, k, v, lr, lc):
    bh, tp, dk = q.shape
    dv = v.shape[-1]
    kernel = functools.partial(kern.forward_kernel, block_k=cfg.block_k, prec=cfg.precision,
                               num_prefix=cfg.num_prefix, width=cfg.width)
    return _call(
        cfg, kernel, (bh, tp // cfg.block_q),
        [_LOG_SPEC, _LOG_SPEC, _blocked(cfg.block_q, dk), _whole(tp, dk), _whole(tp, dv)],
        _blocked(cfg.block_q, dv), jax.ShapeDtypeStruct((bh, tp, dv), q.dtype),
    )(lr, lc, q, k, v)


def _backward(cfg: _Config, q, k, v, lr, lc, do):
    bh, tp, dk = q.shape
    dv = v.shape[-1]
    statics = dict(num_prefix=cfg.num_prefix, width=cfg.width, prec=cfg.precision)
    # dq = sum_j M (do . v_j) k_j is the forward pass with (q, k, v) -> (do, v, k).
    dq = _forward(cfg, do, v, k, lr, lc)
    n_k = tp // cfg.block_k
    part = jax.ShapeDtypeStruct((bh, n_k, 1, 1), jnp.float32)
    part_spec = pl.BlockSpec((None, None, 1, 1), lambda b, n: (b, n, 0, 0))
    dk_, dv_, dlr, dlc = _call(
        cfg, functools.partial(kern.dkv_kernel, block_q=cfg.block_q, **statics),
        (bh, n_k),
        [_LOG_SPEC, _LOG_SPEC, _whole(tp, dk), _blocked(cfg.block_k, dk),
         _blocked(cfg.block_k, dv), _whole(tp, dv)],
        [_blocked(cfg.block_k, dk), _blocked(cfg.block_k, dv), part_spec, part_spec],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
         part, part],
    )(lr, lc, q, k, v, do)
    # Per-key-block partial sums of the decay gradients: the reduction is a tiny XLA op.
    return dq, dk_, dv_, dlr.sum(axis=1), dlc.sum(axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_core(cfg: _Config, q, k, v, lr, lc):
    return _forward(cfg, q, k, v, lr, lc)


def _core_fwd(cfg: _Config, q, k, v, lr, lc):
    # No softmax statistics to keep: the inputs are the whole residual.
    return _forward(cfg, q, k, v, lr, lc), (q, k, v, lr, lc)


def _core_bwd(cfg: _Config, res, do):
    return _backward(cfg, *res, do)


_masked_core.defvjp(_core_fwd, _core_bwd)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def default_block(backend: str, dtype) -> int:
    """Tokens per tile when the caller names none.

    GPU, from `benchmarks/masked_probe.py` on an H200 (2026-12-04, T = 256, D = 64, 16
    heads, forward): 16-bit inputs (TF32 dots) 0.140 / 0.096 / 0.129 ms at 32 / 64 / 128
    tokens, so 64; float32 inputs (IEEE float32 dots, which Triton spills at large tiles)
    0.143 / 0.722 / 2.232 ms, so 32. TPU: 128, the MXU's side; not yet timed.
    """
    if backend == "gpu":
        return 32 if jnp.dtype(dtype).itemsize >= 4 else 64
    return 128


def _fit_block(block: int, tokens: int, backend: str) -> int:
    """Shrinks a block that exceeds the (rounded) sequence, so short inputs pad little.

    TPU tiles want sublane counts in multiples of 16 (bfloat16 packs two rows per sublane);
    Triton wants powers of two of at least 16 (its `tl.dot` minimum).
    """
    if backend == "gpu":
        if block < 16 or block & (block - 1):
            raise ValueError(f"gpu blocks must be powers of two >= 16, got {block}")
        return min(block, max(16, pl.next_power_of_2(tokens)))
    if block % 8:
        raise ValueError(f"tpu blocks must be multiples of 8, got {block}")
    return min(block, _round_up(tokens, 16))


def lasad_masked_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    num_prefix: int,
    log_row: jax.Array,
    log_col: jax.Array,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool = False,
    backend: str = "tpu",
    precision: lax.Precision | None = None,
) -> jax.Array:
    """LASAD `o_i = sum_{j<=i} M[i, j] (q_i . k_j) v_j` (DESIGN.md §1) as Pallas kernels.

    `q, k: [B, T, H, Dk]`, `v: [B, T, H, Dv]`; `log_row`, `log_col`: `[H]` logs (<= 0) of the
    row and column decays. Computes in float32 and returns q's dtype. Differentiable in q, k,
    v, `log_row` and `log_col`, with a Pallas backward. `backend` picks the lowering
    ("tpu": Mosaic; "gpu": Triton); `interpret=True` runs it on CPU (TPU:
    `pltpu.InterpretParams`, GPU: the generic interpreter). Arguments are assumed checked by
    the caller (`lasad_jax.ops.api`); only the kernel-specific limits are checked here.
    `block_q`, `block_k`: tokens per tile; `None` takes `default_block`. `precision` of the
    matmuls; `None` takes `precision.precision(q.dtype)` (benchmarks/masked_probe.py sets it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if t >= MAX_TOKENS:
        raise ValueError(f"the masked Pallas kernel supports T < {MAX_TOKENS}, got {t}")
    block = default_block(backend, q.dtype)
    bq, bk = (_fit_block(block if x is None else x, t, backend) for x in (block_q, block_k))
    tp = _round_up(t, math.lcm(bq, bk))
    # Triton needs power-of-two feature dims of at least 16: zero features change no dot
    # product, and the extra output columns of v are dropped.
    dk_p, dv_p = ((max(16, pl.next_power_of_2(d)) for d in (dk, dv)) if backend == "gpu"
                  else (dk, dv))

    def to_kernel(x: jax.Array, depth: int) -> jax.Array:
        x = x.transpose(0, 2, 1, 3).reshape(b * h, t, x.shape[-1])
        # Zero padding: padded keys add nothing; padded query rows are sliced off below.
        return jnp.pad(x, ((0, 0), (0, tp - t), (0, depth - x.shape[-1])))

    def per_bh(log: jax.Array) -> jax.Array:
        return jnp.tile(log.astype(jnp.float32), b).reshape(b * h, 1, 1)

    cfg = _Config(width=width, num_prefix=num_prefix, block_q=bq, block_k=bk,
                  interpret=bool(interpret), backend=backend,
                  precision=matmul_precision(q.dtype) if precision is None else precision)
    out = _masked_core(cfg, to_kernel(q, dk_p), to_kernel(k, dk_p), to_kernel(v, dv_p),
                       per_bh(log_row), per_bh(log_col))
    out = out[:, :t, :dv].reshape(b, h, t, dv).transpose(0, 2, 1, 3)
    return out.astype(q.dtype)
