"""The intra-chunk output kernel: flash-style masked tiles, with a Pallas backward.

The intra-chunk term of the chunkwise-parallel form (docs/operator.md) tiled over (query
block, key block), the decay mask rebuilt per tile from indices (`masked_kernels.py`), so
no `T x T` or `C x C` array is ever in memory. It takes the whole sequence, prefix slots
included (their keys weigh 1 for every later query): with `rows_per_chunk=None` the image
is one chunk and the kernel is the whole operator (a 256 or 512 px image at the default
chunk), with no XLA work around it on GPU.

Three kernels behind one `jax.custom_vjp`: the forward; `dq`, which is the forward with
`(q, k, v) -> (do, v, k)`; and `dk, dv` with each key block's share of the two log-decay
gradients. With chunks the prefix keys' `dk, dv` are two small XLA products instead
(`_prefix_key_grads`): every later query reads those keys, so the program of their block
would walk the whole sequence while every other walks one chunk.

Grids are `(batch, heads, token blocks)`. On GPU the kernels read and write the caller's
`[B, T, H, D]` arrays where they lie (a block is `[block, D]` at a stride of `H * D`), so
nothing is transposed, split or concatenated; `T` and `D` are padded only
where they are not already multiples of the block and powers of two. On TPU a block's
last two sides must be tiles of the array's, so the arrays are moved to `[B, H, T, D]`
first (the `layout` below). History: the first version took image tokens only, in a
`[B * H, T, D]` layout, with float32 outputs; in a LASADGen-L training step compiled for
an H200 the transposes, the split around the class slot and the float32 output moved
about 43 GB of the step's 228 (benchmarks/RESULTS.md, "Compiled for an H200 without one").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plt

from lasad_jax.ops.pallas import masked_kernels as kern
from lasad_jax.ops.pallas.precision import precision as matmul_precision

BACKENDS = ("tpu", "gpu")
# Rows and columns are derived in float32 inside the kernels; exact below this many tokens.
MAX_TOKENS = 2**22


class Tiles(NamedTuple):
    """How the kernels cut their work: tokens per query tile and per key tile, and, for
    Triton, warps per program and software-pipeline stages of the tile loops."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


class Addend(NamedTuple):
    """An array a kernel adds to its result before the one rounding to the result's dtype,
    laid out as that result (the kernel layout, `[B, Tp, H, D]` or `[B, H, Tp, D]`), and
    the slots `[lo, hi)` it holds (`span`; `None`: every slot). Outside its span a block of
    it is never read as data, so the caller may leave that memory unwritten.

    Why: the chunkwise-parallel split (`chunked.py`) sums this kernel's output with the
    inter-chunk reads, and its gradients with the column kernels' gradients. As separate
    XLA passes, those sums read and wrote four or five sequence-sized arrays more per
    forward+backward (0.35 GB of 2.7 at T = 16384, compiled for an H200)."""

    array: jax.Array
    span: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: it is a `nondiff_argnums` of the VJP)."""

    width: int
    num_prefix: int
    rows_per_chunk: int | None
    tiles: Tiles  # with their blocks fitted to the sequence
    interpret: bool
    backend: str
    precision: lax.Precision  # of every matmul in the kernels
    out_dtype: str  # of the forward's output

    @property
    def layout(self) -> str:
        """"bthd": the caller's `[B, T, H, D]` (GPU, interpreter); "bhtd": `[B, H, T, D]`
        (TPU, whose blocks must span the array's last two sides or tile them)."""
        return "bhtd" if self.backend == "tpu" else "bthd"

    @property
    def launch(self) -> dict:
        """Triton's launch settings, as `call` takes them."""
        return dict(num_warps=self.tiles.num_warps, num_stages=self.tiles.num_stages)

    @property
    def statics(self) -> dict:
        return dict(width=self.width, num_prefix=self.num_prefix,
                    rows_per_chunk=self.rows_per_chunk, prec=self.precision)


# Mosaic's default scoped VMEM (16 MiB), and the most `call` asks for when blocks need more
# (a v5e has 128 MiB of VMEM; a chip with less refuses the compile, naming the kernel).
TPU_SCOPED_VMEM = 16 * 2**20
TPU_MAX_SCOPED_VMEM = 96 * 2**20
# Whole-sequence blocks on TPU get one VMEM buffer instead of Pallas's two once two copies
# of the keys and values would pass this many bytes (`_single_buffer`).
TPU_SINGLE_BUFFER_BYTES = TPU_SCOPED_VMEM // 2


def tpu_vmem_bytes(specs, arrays) -> int:
    """VMEM the pipelined blocks of a TPU kernel take: each block of `specs` (squeezed
    sides count 1) in its array's dtype, its last two sides padded to VMEM's tiles, times
    its buffers (two, Pallas's double buffering, unless the spec's `pipeline_mode` says)."""
    total = 0
    for spec, x in zip(specs, arrays):
        buffers = 2 if spec.pipeline_mode is None else spec.pipeline_mode.buffer_count
        block = spec.block_shape if spec.block_shape is not None else x.shape
        sides = [n if isinstance(n, int) else getattr(n, "block_size", 1) for n in block]
        total += buffers * _vmem_block_bytes(sides, x.dtype)
    return total


def _vmem_block_bytes(sides: list[int], dtype) -> int:
    """One VMEM copy of a block of `sides`: VMEM tiles are 128 lanes by 8 sublanes of 32
    bits (16 rows of 16-bit values), so the last two sides are padded to them."""
    itemsize = jnp.dtype(dtype).itemsize
    sides = list(sides)
    sides[-1] = _round_up(sides[-1], 128)
    if len(sides) > 1:
        sides[-2] = _round_up(sides[-2], 8 * max(1, 4 // itemsize))
    return math.prod(sides) * itemsize


def compiler_params(backend: str, axes: int, num_warps: int, num_stages: int,
                    vmem_bytes: int = 0):
    """The backend's compiler parameters for a grid of `axes` parallel axes (`num_warps`,
    `num_stages`: Triton's; `vmem_bytes`: what the TPU kernel's blocks take).

    Why the VMEM limit: kernels that walk the whole sequence inside a program (the
    intra-chunk kernel's keys and values, `whole=True`) hold it in VMEM. Double-buffered
    at T = 16384 and D = 64 (padded to 128 lanes) that was 16.12 MiB, just over Mosaic's
    16 MiB default, and the program did not compile for a v5e (benchmarks/tpu_aot.py);
    such blocks now take one buffer (`_single_buffer`), which holds up to T = 16384 within
    the default, and longer sequences still need more. Above three quarters of the
    default the limit is the blocks' bytes plus a quarter and 4 MiB for Mosaic's own
    scratch, at most `TPU_MAX_SCOPED_VMEM` (a chip with less VMEM, such as a v4 with
    16 MiB, then refuses the compile); below it nothing changes."""
    if backend == "tpu":
        # Every grid point writes its own output blocks: all axes can be split over cores.
        limit = None
        if vmem_bytes > TPU_SCOPED_VMEM * 3 // 4:
            limit = min(TPU_MAX_SCOPED_VMEM, vmem_bytes * 5 // 4 + 4 * 2**20)
        return pltpu.CompilerParams(dimension_semantics=("parallel",) * axes,
                                    vmem_limit_bytes=limit)
    return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def call(backend: str, interpret: bool, kernel, grid, in_specs, out_specs, out_shape,
         num_warps: int = 4, num_stages: int = 2):
    """`pl.pallas_call` with the backend's compiler params and interpreter (Triton's
    launch settings default to those of `Tiles`); returns a function of the inputs."""
    many = isinstance(out_specs, (list, tuple))
    outs = list(out_shape) if many else [out_shape]

    def run(*inputs):
        vmem = 0
        if backend == "tpu":
            vmem = tpu_vmem_bytes(list(in_specs) + (list(out_specs) if many else [out_specs]),
                                  list(inputs) + outs)
        return pl.pallas_call(
            kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
            compiler_params=compiler_params(backend, len(grid), num_warps, num_stages, vmem),
            interpret=(pltpu.InterpretParams() if backend == "tpu" else True) if interpret
            else False)(*inputs)

    return run


def _seq_spec(layout: str, block: int, depth: int, whole: bool = False,
              single: bool = False) -> pl.BlockSpec:
    """One (batch, head)'s `[block, depth]` tokens at the grid's block index along the
    sequence (`whole`: the whole padded sequence, which the kernel walks with `pl.ds`;
    `single`: in one buffer, see `_single_buffer`)."""
    if layout == "bthd":
        return pl.BlockSpec((None, block, None, depth),
                            lambda b, h, n: (b, 0 if whole else n, h, 0))
    return pl.BlockSpec((None, None, block, depth), lambda b, h, n: (b, h, 0 if whole else n, 0),
                        pipeline_mode=pl.Buffered(1) if single else None)


def _single_buffer(cfg: _Config, tokens: int, depth: int, dtype) -> bool:
    """Whether the whole-sequence key and value blocks get one VMEM buffer (TPU only).

    Why: double-buffered, they took 16.4 MiB at T = 16384 (D = 64 or 128, bf16, lanes
    padded to 128), and a v4, whose TensorCore has 16 MiB of VMEM, refused the compile
    (benchmarks/tpu_aot.py --topology v4-8). Their block changes only when the grid moves
    to the next (batch, head), so the second buffer hides one fetch per head; past
    `TPU_SINGLE_BUFFER_BYTES` that fetch (a few microseconds against a head's hundred-odd
    programs) is the cheaper side. Short sequences keep both buffers, where a head has
    few programs to hide its fetch behind."""
    # Keys and values, two buffers each.
    return (cfg.backend == "tpu"
            and 2 * 2 * _vmem_block_bytes([tokens, depth], dtype) > TPU_SINGLE_BUFFER_BYTES)


# The per-head log decays, `[H, 1, 1]`.
_LOG_SPEC = pl.BlockSpec((None, 1, 1), lambda b, h, n: (h, 0, 0))


def _dims(cfg: _Config, x: jax.Array) -> tuple[int, int, int]:
    """(batch, heads, padded tokens) of an array in the kernel layout."""
    if cfg.layout == "bthd":
        return x.shape[0], x.shape[2], x.shape[1]
    return x.shape[0], x.shape[1], x.shape[2]


def _forward(cfg: _Config, q, k, v, lr, lc, out_dtype, add: Addend | None = None):
    b, h, tp = _dims(cfg, q)
    dk, dv = q.shape[-1], v.shape[-1]
    bq, bk = cfg.tiles.block_q, cfg.tiles.block_k
    one = _single_buffer(cfg, tp, max(dk, dv), k.dtype)
    in_specs = [_LOG_SPEC, _LOG_SPEC, _seq_spec(cfg.layout, bq, dk),
                _seq_spec(cfg.layout, tp, dk, whole=True, single=one),
                _seq_spec(cfg.layout, tp, dv, whole=True, single=one)]
    inputs = [lr, lc, q, k, v]
    if add is not None:
        in_specs.append(_seq_spec(cfg.layout, bq, dv))
        inputs.append(add.array)
    kernel = functools.partial(kern.forward_kernel, block_k=bk, add=add is not None,
                               span=None if add is None else add.span,
                               **cfg.statics)
    return call(
        cfg.backend, cfg.interpret, kernel, (b, h, tp // bq), in_specs,
        _seq_spec(cfg.layout, bq, dv),
        jax.ShapeDtypeStruct(v.shape, jnp.dtype(out_dtype)), **cfg.launch,
    )(*inputs)


def _backward(cfg: _Config, q, k, v, lr, lc, do, dq_add: Addend | None = None,
              dkv_add: tuple[Addend, Addend] | None = None):
    """The five gradients; `dq_add`, `dkv_add`: addends of `dq` and of `dk, dv` (the two
    with one span)."""
    b, h, tp = _dims(cfg, q)
    dk, dv = q.shape[-1], v.shape[-1]
    do = do.astype(q.dtype)  # the products run in the input dtype
    # dq = sum_j M (do . v_j) k_j is the forward pass with (q, k, v) -> (do, v, k).
    dq = _forward(cfg, do, v, k, lr, lc, q.dtype, add=dq_add)
    bq, bk = cfg.tiles.block_q, cfg.tiles.block_k
    n_k = tp // bk
    part = jax.ShapeDtypeStruct((b, h, n_k, 1, 1), jnp.float32)
    part_spec = pl.BlockSpec((None, None, None, 1, 1), lambda b, h, n: (b, h, n, 0, 0))
    lay = cfg.layout
    one = _single_buffer(cfg, tp, max(dk, dv), q.dtype)
    in_specs = [_LOG_SPEC, _LOG_SPEC, _seq_spec(lay, tp, dk, whole=True, single=one),
                _seq_spec(lay, bk, dk), _seq_spec(lay, bk, dv),
                _seq_spec(lay, tp, dv, whole=True, single=one)]
    inputs = [lr, lc, q, k, v, do]
    if dkv_add is not None:
        if dkv_add[0].span != dkv_add[1].span:
            raise ValueError(f"dk and dv addends need one span, got {dkv_add[0].span} "
                             f"and {dkv_add[1].span}")
        in_specs += [_seq_spec(lay, bk, dk), _seq_spec(lay, bk, dv)]
        inputs += [dkv_add[0].array, dkv_add[1].array]
    kernel = functools.partial(kern.dkv_kernel, block_q=bq, add=dkv_add is not None,
                               span=None if dkv_add is None else dkv_add[0].span,
                               **cfg.statics)
    dk_, dv_, dlr, dlc = call(
        cfg.backend, cfg.interpret, kernel, (b, h, n_k), in_specs,
        [_seq_spec(lay, bk, dk), _seq_spec(lay, bk, dv), part_spec, part_spec],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
         part, part], **cfg.launch,
    )(*inputs)
    if cfg.rows_per_chunk is not None and cfg.num_prefix:
        dk_, dv_ = _prefix_key_grads(cfg, q, k, v, do, dk_, dv_)
    # Per-(batch, key block) partial sums of the decay gradients: the reduction is a tiny
    # XLA op.
    return dq, dk_, dv_, dlr.sum(axis=(0, 2)), dlc.sum(axis=(0, 2))


def _prefix_key_grads(cfg: _Config, q, k, v, do, dk_, dv_):
    """Adds the gradients of the prefix keys and values, which the dk/dv kernel leaves out
    when there are chunks. Prefix key `j` weighs 1 for every query `i >= j`, so with
    `G_j = sum_{i >= j} q_i do_i^T` (`[Dk, Dv]`, float32): `dk_j = G_j v_j`,
    `dv_j = G_j^T k_j`. `G` is one product over the sequence plus a suffix sum over the
    few prefix slots."""
    p, axis = cfg.num_prefix, 1 if cfg.layout == "bthd" else 2
    spec = "btkd,btke->bkde" if cfg.layout == "bthd" else "bktd,bkte->bkde"
    f32 = jnp.float32

    def cut(x, lo, hi):
        return lax.slice_in_dim(x, lo, hi, axis=axis)

    def head(x):  # the prefix slots, [B, P, H, D] float32
        return jnp.moveaxis(cut(x, 0, p), axis, 1).astype(f32)

    image = jnp.einsum(spec, cut(q, p, q.shape[axis]), cut(do, p, do.shape[axis]),
                       preferred_element_type=f32)  # [B, H, Dk, Dv]
    outer = jnp.einsum("bphd,bphe->bphde", head(q), head(do))
    g = image[:, None] + jnp.flip(jnp.cumsum(jnp.flip(outer, 1), axis=1), 1)  # G_j, j < P
    dkp = jnp.einsum("bphde,bphe->bphd", g, head(v))
    dvp = jnp.einsum("bphde,bphd->bphe", g, head(k))

    def add(grad, extra):
        first = cut(grad, 0, p).astype(f32) + jnp.moveaxis(extra, 1, axis)
        return lax.dynamic_update_slice_in_dim(grad, first.astype(grad.dtype), 0, axis)

    return add(dk_, dkp), add(dv_, dvp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_core(cfg: _Config, q, k, v, lr, lc):
    return _forward(cfg, q, k, v, lr, lc, cfg.out_dtype)


def _core_fwd(cfg: _Config, q, k, v, lr, lc):
    # No softmax statistics to keep: the inputs are the whole residual.
    return _forward(cfg, q, k, v, lr, lc, cfg.out_dtype), (q, k, v, lr, lc)


def _core_bwd(cfg: _Config, res, do):
    return _backward(cfg, *res, do)


_masked_core.defvjp(_core_fwd, _core_bwd)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def default_tiles(backend: str, dtype) -> Tiles:
    """The tiles used when the caller names none.

    GPU: 64-token tiles, 4 warps, 2 stages for 16-bit inputs; 32-token tiles for float32
    (IEEE float32 dots, which Triton spills at large tiles). The tile size comes from
    `benchmarks/masked_probe.py` on an H200 (2026-12-04, T = 256, D = 64, forward) for
    the kernel as it then was (tiles cast to float32, TF32 dots): 0.140 / 0.096 / 0.129 ms
    at 32 / 64 / 128 tokens; float32 0.143 / 0.722 / 2.232 ms. The kernels now multiply
    16-bit tiles directly, which favours larger tiles; the `tiles` stage of
    benchmarks/device_check.sh re-times tiles, warps and stages at LASADGen's training
    shapes, forward and backward. TPU: 128, the MXU's side; not timed.
    """
    if backend == "gpu":
        return Tiles(32, 32) if jnp.dtype(dtype).itemsize >= 4 else Tiles(64, 64)
    return Tiles(128, 128)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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


def feature_size(d: int, backend: str) -> int:
    """A feature size on the kernels' grid: Triton needs powers of two of at least 16 (zero
    features change no dot product); Mosaic takes the size as it is."""
    return max(16, pl.next_power_of_2(d)) if backend == "gpu" else d


@dataclasses.dataclass(frozen=True)
class Plan:
    """One call's kernel configuration and the layout glue around the kernels: the
    caller's `[B, T, H, D]` arrays to the kernel layout and back (`intra_attention`; the
    chunkwise-parallel split, which calls the kernels itself, uses it too)."""

    cfg: _Config
    tokens: int  # T
    padded: int  # Tp: a multiple of both blocks
    heads: int

    def to_kernel(self, x: jax.Array, depth: int) -> jax.Array:
        """`[B, T, H, D]` to the kernel layout: zero padding only where needed (padded keys
        add nothing; padded query rows are sliced off by `from_kernel`), transposed on
        TPU."""
        if self.padded > x.shape[1] or depth > x.shape[-1]:
            x = jnp.pad(x, ((0, 0), (0, self.padded - x.shape[1]), (0, 0),
                            (0, depth - x.shape[-1])))
        return x.transpose(0, 2, 1, 3) if self.cfg.layout == "bhtd" else x

    def from_kernel(self, x: jax.Array, depth: int) -> jax.Array:
        """A kernel-layout result back to `[B, T, H, depth]`."""
        if self.cfg.layout == "bhtd":
            x = x.transpose(0, 2, 1, 3)
        return x if x.shape[1:] == (self.tokens, self.heads, depth) else \
            x[:, :self.tokens, :, :depth]

    def per_head(self, log: jax.Array) -> jax.Array:
        return log.astype(jnp.float32).reshape(self.heads, 1, 1)


def plan(q: jax.Array, *, width: int, num_prefix: int = 0, rows_per_chunk: int | None = None,
         block_q: int | None = None, block_k: int | None = None, num_warps: int | None = None,
         num_stages: int | None = None, interpret: bool = False, backend: str = "tpu",
         out_dtype=jnp.float32) -> Plan:
    """The `Plan` of `intra_attention` for queries like `q` (arguments as there, checked
    here)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    t, h = q.shape[1], q.shape[2]
    if t >= MAX_TOKENS:
        raise ValueError(f"the masked Pallas kernel supports T < {MAX_TOKENS}, got {t}")
    if backend == "tpu" and (num_warps, num_stages) != (None, None):
        raise ValueError("num_warps and num_stages are Triton settings (backend='gpu'), "
                         f"got num_warps={num_warps!r}, num_stages={num_stages!r}")
    given = dict(block_q=block_q, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
    tiles = default_tiles(backend, q.dtype)._replace(
        **{name: x for name, x in given.items() if x is not None})
    if not _is_int(tiles.num_warps) or tiles.num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be one of 1, 2, 4, 8, 16, got {num_warps!r}")
    if not _is_int(tiles.num_stages) or tiles.num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
    tiles = tiles._replace(block_q=_fit_block(tiles.block_q, t, backend),
                           block_k=_fit_block(tiles.block_k, t, backend))
    cfg = _Config(width=width, num_prefix=num_prefix, rows_per_chunk=rows_per_chunk,
                  tiles=tiles, interpret=bool(interpret), backend=backend,
                  precision=matmul_precision(q.dtype),
                  out_dtype=jnp.dtype(out_dtype).name)
    return Plan(cfg, t, _round_up(t, math.lcm(tiles.block_q, tiles.block_k)), h)


def intra_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    log_row: jax.Array,
    log_col: jax.Array,
    num_prefix: int = 0,
    rows_per_chunk: int | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
    backend: str = "tpu",
    out_dtype=jnp.float32,
) -> jax.Array:
    """`o_i = sum_{j <= i} M[i, j] (q_i . k_j) v_j` as Pallas kernels, where `M` is the
    `lasad` mask (prefix keys weigh 1) cut to each query's chunk; returns `[B, T, H, Dv]`
    in `out_dtype`.

    `q, k: [B, T, H, Dk]`, `v: [B, T, H, Dv]`: `num_prefix` prefix slots, then image
    tokens in raster order on a grid of `width` columns. `log_row`, `log_col`: `[H]` logs
    (<= 0) of the row and column decays. `rows_per_chunk`: image keys count only inside
    their query's chunk of that many whole grid rows (`None`: one chunk, the whole
    operator). Differentiable in q, k, v, `log_row` and `log_col`, with a Pallas backward.
    `backend` picks the lowering ("tpu": Mosaic; "gpu": Triton); `interpret=True` runs it on
    CPU (TPU: `pltpu.InterpretParams`, GPU: the generic interpreter). `block_q`, `block_k`:
    tokens per tile; `num_warps`, `num_stages`: Triton's launch settings (GPU only); each
    `None` takes `default_tiles`. The matmuls' precision follows q's dtype
    (`precision.precision`).
    """
    p = plan(q, width=width, num_prefix=num_prefix, rows_per_chunk=rows_per_chunk,
             block_q=block_q, block_k=block_k, num_warps=num_warps, num_stages=num_stages,
             interpret=interpret, backend=backend, out_dtype=out_dtype)
    dk_p, dv_p = feature_size(q.shape[-1], backend), feature_size(v.shape[-1], backend)
    out = _masked_core(p.cfg, p.to_kernel(q, dk_p), p.to_kernel(k, dk_p),
                       p.to_kernel(v.astype(q.dtype), dv_p), p.per_head(log_row),
                       p.per_head(log_col))
    return p.from_kernel(out, v.shape[-1])
