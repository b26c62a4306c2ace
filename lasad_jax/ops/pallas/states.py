"""The state pass kernel of the chunkwise-parallel `lasad` form: smoothing and passing fused.

Between the chunk sums (`columns.column_outer`) and the inter-chunk reads
(`columns.column_apply`) the form needs the states entering each chunk:

    H_i = d H_{i-1} + T_b S_i,    H_{-1} = 0,

`S_i` the sums of chunk `i` (one `Dk x Dv` matrix per grid column), `d = a^R` the row decay
over one chunk and `T_b` the `w x w` column Toeplitz matrix `b^|c - c'|` (smoothing each
chunk's sums and then passing them equals passing and then smoothing, by linearity). The
XLA form does this as two passes over every state (a batched Toeplitz matmul, then an
elementwise scan over the chunks), each reading and writing all of them, plus the slicing
and padding around them. Here one program per (batch * head, feature tile) walks the chunks
in order and keeps its running `w x f` state on chip: each chunk's sums are read once and
each state written once, half the state traffic of the two passes. `T_b` is built from
indices in the kernel; the Toeplitz product is a `[w, w] @ [w, f]` matmul.

Backward, a second kernel walking the chunks in reverse. With `g_i` the cotangent of `H_i`
and `G_i = g_i + d G_{i+1}` (the cotangent gathered over every later chunk):

    dS_i = T_b G_i                                  (`T_b` is symmetric)
    d log d = d sum_{i >= 1} <G_i, H_{i-1}>
    d log b = sum_i <G_i S_i^T, D_b> = sum_i <G_i, D_b S_i>,   D_b[c, c'] = |c - c'| b^|c - c'|

(`D_b` is the derivative of `T_b` in `log b`.) Each program returns its shares of the two
scalars and XLA sums them. An earlier version returned each program's `[w, w]` share of
`dT_b` and let XLA pull the sum back through the Toeplitz matrix: with 128 programs per
(batch * head) at `Dk = Dv = 64` and `w = 128`, 0.13 GB written and read again by XLA's
reduction, whatever the chunk; 3% to 8% of the split's forward+backward traffic at
T = 16384 (benchmarks/gpu_aot.py, benchmarks/RESULTS.md).
`D_b S_i` costs the same `[w, w] @ [w, f]` product per chunk as `G_i S_i^T` did. The
kernel layout is chunk-major, `[N, M, W, F]` (`M` = batch * heads, `F = Dk * Dv`
flattened), which is the layout `column_outer` writes and `column_apply` reads: no
transpose on either side. Padded columns (zero sums) add nothing to the real columns;
their own states are read only by zero (padded) queries.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lasad_jax.ops.pallas.masked import call
from lasad_jax.ops.pallas.masked_kernels import sum11

F32 = jnp.float32
# Feature-axis tile per program. GPU: a small tile bounds what each program carries from
# chunk to chunk (its `w x f` float32 states, 16 KiB at w = 128) and gives `B*H*F/32`
# programs (2048 at B = 1, 16 heads, D = 64); the smallest side `tl.dot` takes is 16. Not
# timed yet (benchmarks/device_check.sh, stage "pallas"). TPU: one lane width (128), or
# the whole `F` when it is not a multiple of 128.
GPU_TILE = 32
TPU_TILE = 128


@dataclasses.dataclass(frozen=True)
class PassConfig:
    """Static facts of one call (hashable: `nondiff_argnums` of the VJP)."""

    tile: int  # features per program; divides F
    interpret: bool
    backend: str
    precision: lax.Precision  # of the Toeplitz products (float32 operands)


def feature_tile(backend: str, features: int) -> int:
    """Features per program for a flattened state of `features = Dk * Dv` numbers."""
    if backend == "gpu":
        # On GPU F is a product of two padded feature sizes: a power of two >= 256.
        return min(GPU_TILE, features)
    return TPU_TILE if features % TPU_TILE == 0 else features


def _distance(width: int) -> jax.Array:
    """`[w, w]` column distances `|c - c'|`, from indices."""
    i = lax.broadcasted_iota(jnp.int32, (width, width), 0).astype(F32)
    j = lax.broadcasted_iota(jnp.int32, (width, width), 1).astype(F32)
    return jnp.abs(i - j)


def _toeplitz(width: int, lb: jax.Array) -> jax.Array:
    """`[w, w]` weights `b^|c - c'|` from indices; `lb` is a `(1, 1)` log b."""
    return jnp.exp(_distance(width) * lb)


def _dot(a, b, prec, contract=((1,), (0,))):
    return lax.dot_general(a, b, (contract, ((), ())), precision=prec,
                           preferred_element_type=F32)


def _forward_kernel(lk_ref, lb_ref, s_ref, h_ref, *, prec: lax.Precision):
    """`h[i] = d h[i-1] + T_b s[i]` over the program's chunks, in order."""
    n, w, f = s_ref.shape
    toe = _toeplitz(w, lb_ref[...])
    d = jnp.exp(lk_ref[...])  # (1, 1)

    def body(i, h):  # the running state stays float32; storage rounds it
        h = d * h + _dot(toe, s_ref[i].astype(F32), prec)
        h_ref[i] = h.astype(h_ref.dtype)
        return h

    lax.fori_loop(0, n, body, jnp.zeros((w, f), F32))


def _backward_kernel(lk_ref, lb_ref, s_ref, h_ref, g_ref, ds_ref, dlk_ref, dlb_ref, *,
                     prec: lax.Precision):
    """The reverse walk: `dS`, and this program's shares of `d log d` and `d log b`."""
    n, w, f = s_ref.shape
    dist = _distance(w)
    toe = jnp.exp(dist * lb_ref[...])
    d_toe = dist * toe  # D_b: the derivative of T_b in log b
    d = jnp.exp(lk_ref[...])

    def gather(i, carry):  # G_i from G_{i+1}; writes dS_i, adds <G_i, D_b S_i>
        big_g, dlb = carry
        big_g = g_ref[i].astype(F32) + d * big_g
        ds_ref[i] = _dot(toe, big_g, prec).astype(ds_ref.dtype)
        return big_g, dlb + sum11(big_g * _dot(d_toe, s_ref[i].astype(F32), prec))

    def body(t, carry):  # i = n-1 ... 1: these chunks read a state before them
        i = n - 1 - t
        big_g, dlb = gather(i, carry[:2])
        return big_g, dlb, carry[2] + sum11(big_g * h_ref[i - 1].astype(F32))

    scalar = jnp.zeros((1, 1), F32)
    big_g, dlb, dd = lax.fori_loop(0, n - 1, body, (jnp.zeros((w, f), F32), scalar, scalar))
    _, dlb = gather(0, (big_g, dlb))
    dlk_ref[...] = d * dd
    dlb_ref[...] = dlb


def _chunks_spec(n: int, w: int, tile: int) -> pl.BlockSpec:
    """Every chunk of one (batch * head) row and one feature tile."""
    return pl.BlockSpec((n, None, w, tile), lambda m, t: (0, m, 0, t))


_LOG_SPEC = pl.BlockSpec((None, 1, 1), lambda m, t: (m, 0, 0))


def _forward(cfg: PassConfig, sums, lk, lb):
    n, m, w, f = sums.shape
    spec = _chunks_spec(n, w, cfg.tile)
    return call(cfg.backend, cfg.interpret,
                functools.partial(_forward_kernel, prec=cfg.precision), (m, f // cfg.tile),
                [_LOG_SPEC, _LOG_SPEC, spec], spec,
                jax.ShapeDtypeStruct(sums.shape, sums.dtype))(lk, lb, sums)


def _backward(cfg: PassConfig, sums, states, lk, lb, g):
    n, m, w, f = sums.shape
    tiles = f // cfg.tile
    spec = _chunks_spec(n, w, cfg.tile)
    part = pl.BlockSpec((None, None, 1, 1), lambda m, t: (m, t, 0, 0))
    share = jax.ShapeDtypeStruct((m, tiles, 1, 1), F32)  # one number per program
    ds, dlk, dlb = call(
        cfg.backend, cfg.interpret, functools.partial(_backward_kernel, prec=cfg.precision),
        (m, tiles), [_LOG_SPEC, _LOG_SPEC, spec, spec, spec], [spec, part, part],
        [jax.ShapeDtypeStruct(sums.shape, sums.dtype), share, share],
    )(lk, lb, sums, states, g.astype(sums.dtype))
    return ds, dlk.sum(axis=1), dlb.sum(axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def smooth_and_pass(cfg: PassConfig, sums: jax.Array, lk: jax.Array, lb: jax.Array):
    """`H_i = exp(lk) H_{i-1} + T_b S_i` for `sums: [N, M, W, F]` (chunk-major,
    `F = Dk * Dv`; float32 or 16-bit storage), `lk`: `[M, 1, 1]` log of the decay over one
    chunk, `lb`: `[M, 1, 1]` log b; returns `[N, M, W, F]` in the sums' dtype, `H_i` being
    the state that chunk `i + 1` reads. The walk itself is float32 whatever the storage:
    each state is rounded once, when it is written, and never read back by the walk."""
    return _forward(cfg, sums, lk, lb)


def _pass_fwd(cfg, sums, lk, lb):
    states = _forward(cfg, sums, lk, lb)
    return states, (sums, states, lk, lb)


def _pass_bwd(cfg, res, g):
    return _backward(cfg, *res, g)


smooth_and_pass.defvjp(_pass_fwd, _pass_bwd)
