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

Backward, a second kernel walking the chunks in reverse. With `g_i` the cotangent of `H_i`,
`G_i = g_i + d G_{i+1}` (the cotangent gathered over every later chunk) and
`E_i = d (E_{i+1} + G_{i+1})` (the same, each later chunk weighted by how many chunks away
it is: `E_i = sum_{j > i} (j - i) d^(j - i) g_j`):

    dS_i = T_b G_i                                  (`T_b` is symmetric)
    d log d = sum_i <E_i, T_b S_i>
    d log b = sum_i <G_i S_i^T, D_b> = sum_i <G_i, D_b S_i>,   D_b[c, c'] = |c - c'| b^|c - c'|

(`D_b` is the derivative of `T_b` in `log b`; `d log d` follows from
`H_j = sum_{i <= j} d^(j - i) T_b S_i`, whose derivative in `log d` weighs each term by
`j - i`.) Each program returns its shares of the two scalars and XLA sums them. Both
need only the sums and the cotangents: the walk never reads the states it wrote.

Two earlier versions moved more. One took `d log d = d sum_i <G_i, H_{i-1}>`, which read
every state back: one of the passes over the column states that a forward+backward of the
split makes (0.12 GB at T = 16384 and 2048-token chunks, bf16 states; compiled for an
H200, the split went from 2.74 to 2.63 GB). One returned each program's `[w, w]` share of
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


def _backward_kernel(lk_ref, lb_ref, s_ref, g_ref, ds_ref, dlk_ref, dlb_ref, *,
                     prec: lax.Precision):
    """The reverse walk: `dS`, and this program's shares of `d log d` and `d log b`."""
    n, w, f = s_ref.shape
    dist = _distance(w)
    toe = jnp.exp(dist * lb_ref[...])
    d_toe = dist * toe  # D_b: the derivative of T_b in log b
    d = jnp.exp(lk_ref[...])

    def chunk(i, big_g):  # writes dS_i; chunk i's term of d log b, and its sums
        s = s_ref[i].astype(F32)
        ds_ref[i] = _dot(toe, big_g, prec).astype(ds_ref.dtype)
        return sum11(big_g * _dot(d_toe, s, prec)), s

    def body(t, carry):  # chunk i = n-2 ... 0, from G_{i+1} and F_{i+1} = E_{i+1} + G_{i+1}
        i = n - 2 - t
        big_g, big_f, dlk, dlb = carry
        big_e = d * big_f
        big_g = g_ref[i].astype(F32) + d * big_g
        lb_i, s = chunk(i, big_g)
        return big_g, big_e + big_g, dlk + sum11(big_e * _dot(toe, s, prec)), dlb + lb_i

    # The last chunk (E_{n-1} = 0: no term of d log d) before the loop, whose carries
    # then start from a loaded tile: with E's carry starting as zeros, Mosaic refused the
    # kernel ("Invalid relayout" of the `[w, f]` tile; benchmarks/tpu_aot.py --stages
    # ops, v5e-8).
    big_g = g_ref[n - 1].astype(F32)
    dlb, _ = chunk(n - 1, big_g)
    _, _, dlk, dlb = lax.fori_loop(0, n - 1, body, (big_g, big_g, jnp.zeros_like(dlb), dlb))
    dlk_ref[...] = dlk
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


def _backward(cfg: PassConfig, sums, lk, lb, g):
    n, m, w, f = sums.shape
    tiles = f // cfg.tile
    spec = _chunks_spec(n, w, cfg.tile)
    part = pl.BlockSpec((None, None, 1, 1), lambda m, t: (m, t, 0, 0))
    share = jax.ShapeDtypeStruct((m, tiles, 1, 1), F32)  # one number per program
    ds, dlk, dlb = call(
        cfg.backend, cfg.interpret, functools.partial(_backward_kernel, prec=cfg.precision),
        (m, tiles), [_LOG_SPEC, _LOG_SPEC, spec, spec], [spec, part, part],
        [jax.ShapeDtypeStruct(sums.shape, sums.dtype), share, share],
    )(lk, lb, sums, g.astype(sums.dtype))
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
    # The backward needs the sums, not the states (see the module docstring).
    return _forward(cfg, sums, lk, lb), (sums, lk, lb)


def _pass_bwd(cfg, res, g):
    return _backward(cfg, *res, g)


smooth_and_pass.defvjp(_pass_fwd, _pass_bwd)
