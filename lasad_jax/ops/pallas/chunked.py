"""The chunkwise-parallel `lasad` form with Pallas kernels: `impl="pallas"`.

The same four steps as the XLA form (`ops/chunked.py`, docs/operator.md), with kernels
where a kernel can avoid memory traffic that XLA cannot:

1. intra-chunk: `masked.intra_attention`, flash-style tiles limited to each query's chunk,
   the decay mask built from indices in registers (no `C x C` scores in memory), with
   its own Pallas backward (dq; dk, dv and the decay gradients); it also reads the
   prefix slots, whose keys every later query sees with weight 1;
2. chunk sums: `columns.column_outer` (`S_n(c) = sum_r a^(R - r) k v^T` per column);
3. smoothing and state pass: `states.smooth_and_pass`, one kernel that walks the chunks
   with each program's running states on chip (`H_n = a^R H_{n-1} + T_b S_n`), reading
   each chunk's sums once and writing each state once;
4. inter-chunk reads: `columns.column_apply` (`a^r q . H_n(c)` per column).

Autodiff composes the pieces: each kernel sits behind its own `jax.custom_vjp` whose
backward runs kernels, and XLA differentiates the glue (layouts, padding) and sums the
parts (the output of steps 1 and 4; the gradients of q, k and v from step 1 and from
steps 2 and 4). With one chunk (a 256 or 512 px image at the default chunk, or
`chunk_size >= T`) only step 1 runs, on the caller's arrays as they lie (GPU), and writes
the result in q's dtype. Where every kernel can read the caller's arrays as they lie (GPU,
no prefix slot, whole chunks of a power-of-two grid: `_direct_split`), one
`jax.custom_vjp` covers the whole split instead and the kernels sum the parts themselves
(`masked.Addend`): compiled for an H200 at T = 16384 (2048-token chunks), 2.28 GB instead
of 2.63 for a forward+backward, 23 kernels instead of 28.

Layout: step 1 reads the whole sequence, `[B, T, H, D]` (`masked.py`). Steps 2 and 4 read
the image tokens per (chunk, column). On GPU, when the grid width and the rows of a chunk
are powers of two of at least 16 and the feature sizes need no padding (square power-of-
two grids at the chunks that matter: T = 4096 at 1024 or 2048 tokens, 16384 at 2048 or
4096), they read q, k, v and write their results as free views of the sequence,
`[B, N, R, W, H, D]` ("tokens", `columns.LAYOUTS`), each call starting at the chunk it
needs. Otherwise (and on TPU, whose blocks must tile an array's last two sides) they
read column-major chunks `[(N-1)*B*H, W, R', D]` (`R'` >= R rows) that XLA transposes
q, k, v into, and their results and gradients are transposed back ("columns"): compiled
for an H200 at T = 16384 and 2048-token chunks, those transposes cost 0.26 of 3.0 GB.
Steps 2 to 4 keep the states in one layout,
`[N-1, B*H, W', Dk', Dv']`, padded as the kernels need it: no slice, pad or transpose of a
state between them. On GPU the row, column and feature sides are padded with zeros to
powers of two with matmul sides of at least 16 (Triton's `tl.dot` and loads; the grid
width too, for the state kernel's `[W', W']` Toeplitz product); exact, see `columns.py`
and `states.py`.

State storage. Steps 2 to 4 and their backward pass arrays of one `Dk x Dv` state per grid
column and chunk from kernel to kernel: the chunk sums, the entering states and their two
cotangents, read or written ten times in a forward+backward. They are `W/R` times
larger than a chunk's keys (at T = 16384 and 2048-token chunks, 235 MB in float32 against
33 MB of keys), so their storage sets most of the split's memory traffic. For bfloat16
inputs they are stored in bfloat16 (`state_storage`), as flash-linear-attention stores
its chunk states: every sum and walk still runs in float32 on chip (the pass keeps its
running state in float32 and rounds only what it writes), and each product with a stored
state takes bf16 operands with float32 accumulation. Compiled for an H200, forward+backward
at T = 16384 moves 3.0 GB instead of 4.3 (chunks of 2048; 5.1 instead of 7.9 at 1024), at
T = 4096 0.67 instead of 0.95 GB (benchmarks/RESULTS.md). The price, measured against the
float32 reference on the same bf16 inputs (`benchmarks/numerics.py --pallas`, T = 257 to
4097): the output's worst error grows from 2.5e-3 - 3.0e-3 to 3.1e-3 - 3.4e-3 of its
largest value (the tests hold 2^-7 = 7.8e-3), the gradients stay within 7.5e-3, and the
hardest case, decays of 1 over 16k tokens, stays under 2^-7 (tests/ops/test_pallas_api.py).
Other 16-bit inputs (float16, whose range a long sum of `k v^T` could exceed) and float32
ones keep float32 states; `state_dtype=` overrides the choice (benchmarks/kernels.py
times both).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lasad_jax.ops import chunked
from lasad_jax.ops.validation import check_choice
from lasad_jax.ops.pallas import columns, masked, states
from lasad_jax.ops.pallas.masked import BACKENDS, feature_size, intra_attention
from lasad_jax.ops.pallas.precision import precision

# Columns per program of the per-column kernels (fewer when the grid is narrower).
COLS_PER_PROGRAM = 8


# What `state_dtype=` may name: the two storages measured (benchmarks/numerics.py --pallas).
STATE_DTYPES = ("float32", "bfloat16")


def state_storage(dtype) -> jnp.dtype:
    """How the column states are stored between the kernels for inputs of `dtype`
    ("State storage" above): bfloat16 for bfloat16 inputs, float32 otherwise."""
    return jnp.dtype(jnp.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else jnp.float32)


def chunk_rows(width: int, chunk_size: int, num_image: int) -> tuple[int, int]:
    """`(R, N)`: whole grid rows per chunk and the number of chunks: the XLA form's
    layout (`chunked.chunk_layout`)."""
    layout = chunked.chunk_layout("lasad", width, chunk_size, num_image)
    return layout.groups, max(1, -(-num_image // layout.tokens))


def _column_layout(backend: str, width: int, rows: int,
                   features: tuple[int, int]) -> tuple[int, int, int, str]:
    """`(R', W', cols, layout)`: padded rows per chunk, padded columns, columns per program,
    and where the column kernels read the tokens (`columns.LAYOUTS`).

    On GPU, when the rows of a chunk and the grid width are already powers of two of at
    least 16 and neither feature size needs padding, the kernels read q, k, v and write
    their results as free views of the sequence, `[B, N, R, W, H, D]` ("tokens"); else XLA
    transposes them into padded column-major chunks ("columns")."""
    if backend == "gpu":
        # Columns padded to a power of two of at least 16 (the state kernel's Toeplitz
        # product); a multiple of `cols`, which is a smaller power of two.
        cols = min(COLS_PER_PROGRAM, pl.next_power_of_2(width))
        rp, wp = max(16, pl.next_power_of_2(rows)), max(16, pl.next_power_of_2(width))
        as_is = (rp == rows and wp == width
                 and all(feature_size(d, backend) == d for d in features))
        return rp, wp, cols, "tokens" if as_is else "columns"
    cols = min(COLS_PER_PROGRAM, width)
    return rows, -(-width // cols) * cols, cols, "columns"


def lasad_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    width: int,
    num_prefix: int,
    log_row: jax.Array,
    log_col: jax.Array,
    chunk_size: int,
    interpret: bool = False,
    backend: str = "tpu",
    block_q: int | None = None,
    block_k: int | None = None,
    state_dtype=None,
) -> jax.Array:
    """`lasad` attention (docs/operator.md) for `q, k: [B, T, H, Dk]`, `v: [B, T, H, Dv]`
    with Pallas kernels; returns q's dtype. Arguments are assumed checked by the caller
    (`lasad_jax.ops.api`). `chunk_size`: tokens per chunk, rounded down to whole grid rows
    and at least one row (as the XLA form). `backend`: "tpu" (Mosaic) or "gpu" (Triton);
    `interpret=True` runs the kernels in the Pallas interpreter (CPU tests). `block_q`,
    `block_k`: tiles of the intra-chunk kernel (`masked.default_tiles` when `None`).
    `state_dtype`: storage of the column states between the kernels of steps 2 to 4
    (`None`: `state_storage`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if state_dtype is not None:
        name = state_dtype if isinstance(state_dtype, str) else jnp.dtype(state_dtype).name
        check_choice("state_dtype", name, STATE_DTYPES)
    log_row, log_col = log_row.astype(jnp.float32), log_col.astype(jnp.float32)
    num_image = q.shape[1] - num_prefix
    rows, n = chunk_rows(width, chunk_size, max(num_image, 1))

    def intra(out_dtype):
        return intra_attention(q, k, v, width=width, num_prefix=num_prefix, log_row=log_row,
                               log_col=log_col, rows_per_chunk=rows if n > 1 else None,
                               block_q=block_q, block_k=block_k, interpret=interpret,
                               backend=backend, out_dtype=out_dtype)

    if n == 1:  # the kernel is the whole operator: its output is the result
        return intra(q.dtype)
    sdtype = jnp.dtype(state_dtype or state_storage(q.dtype))
    direct = _direct_split(q, v, width=width, num_prefix=num_prefix, rows=rows, n=n,
                           interpret=interpret, backend=backend, block_q=block_q,
                           block_k=block_k, state_dtype=sdtype)
    if direct is not None:
        return _direct(direct, q, k, v.astype(q.dtype), log_row, log_col)
    inter = _inter_chunk(q[:, num_prefix:], k[:, num_prefix:], v[:, num_prefix:], log_row,
                         log_col, width=width, rows=rows, n=n, interpret=interpret,
                         backend=backend, state_dtype=sdtype)
    inter = jnp.pad(inter, ((0, 0), (num_prefix, 0), (0, 0), (0, 0)))
    return (intra(jnp.float32) + inter).astype(q.dtype)


def _configs(dtype, backend: str, interpret: bool, rows: int, dk: int, dv: int, state_dtype,
             cols: int, layout: str) -> tuple[columns.ColumnConfig, states.PassConfig]:
    """The column kernels' and the state pass's statics for inputs of `dtype` (`cols` and
    `layout` as `_column_layout` gives them)."""
    cfg = columns.ColumnConfig(rows=rows, cols=cols, interpret=bool(interpret),
                               backend=backend, precision=precision(dtype),
                               dtype=jnp.dtype(dtype).name,
                               state_dtype=jnp.dtype(state_dtype).name, layout=layout)
    features = feature_size(dk, backend) * feature_size(dv, backend)
    return cfg, states.PassConfig(tile=states.feature_tile(backend, features),
                                  interpret=bool(interpret), backend=backend,
                                  precision=cfg.precision)


def _by_chunk(x: jax.Array, n: int) -> jax.Array:
    """Column states `[(N-1) * B * H, W', Dk', Dv']` as the state pass takes them,
    `[N-1, B * H, W', Dk' * Dv']` (free)."""
    m, wp, dkp, dvp = x.shape
    return x.reshape(n - 1, m // (n - 1), wp, dkp * dvp)


def _column_logs(log_row: jax.Array, log_col: jax.Array, n: int, batch: int, rows: int):
    """`(la, lk, lb)`: log a per row of the column kernels (`(N-1) * B * H`), and per row
    of the state pass (`B * H`) the log decay over a chunk's rows and log b."""
    h = log_row.shape[0]

    def rows_of(x, lead):
        return jnp.broadcast_to(x, lead + (h,)).reshape(-1, 1, 1)

    return (rows_of(log_row, (n - 1, batch)), rows_of(rows * log_row, (batch,)),
            rows_of(log_col, (batch,)))


def _state_pass(cfg: states.PassConfig, sums, lk, lb, n: int):
    """The state pass's kernel on `[(N-1) * B * H, W', Dk', Dv']` sums (no VJP of its own:
    `_direct`'s backward calls `_state_pass_grads`)."""
    return states._forward(cfg, _by_chunk(sums, n), lk, lb).reshape(sums.shape)


def _state_pass_grads(cfg: states.PassConfig, sums, lk, lb, g, n: int):
    """`(d sums, d lk, d lb)` of `_state_pass`, laid out as its inputs."""
    ds, dlk, dlb = states._backward(cfg, _by_chunk(sums, n), lk, lb, _by_chunk(g, n))
    return ds.reshape(sums.shape), dlk, dlb


def _inter_chunk(q, k, v, log_row, log_col, *, width, rows, n, interpret, backend,
                 state_dtype):
    """Steps 2 to 4 over the image tokens: what each token reads from the chunks before
    its own, float32 `[B, num_image, H, Dv]` (zero in chunk 0)."""
    b, num_image, h, dk = q.shape
    dv = v.shape[-1]
    rp, wp, cols, layout = _column_layout(backend, width, rows, (dk, dv))
    dkp, dvp = feature_size(dk, backend), feature_size(dv, backend)
    c = rows * width
    cfg, pass_cfg = _configs(q.dtype, backend, interpret, rows, dk, dv, state_dtype, cols,
                             layout)

    def by_token(x):
        """[B, L, H, D] -> [B, N, R, W, H, D]: a free view (after a pad when the last
        chunk is partial)."""
        x = jnp.pad(x, ((0, 0), (0, n * c - num_image), (0, 0), (0, 0)))
        return x.reshape(b, n, rows, width, h, x.shape[-1])

    def by_column(x, chunks: slice, depth: int):
        """[B, L, H, D] -> [n'*B*H, W', R', depth]: column-major chunks, zero padded."""
        x = jnp.pad(x, ((0, 0), (0, n * c - num_image), (0, 0), (0, 0)))
        x = x.reshape(b, n, rows, width, h, -1)[:, chunks]
        x = x.transpose(1, 0, 4, 3, 2, 5)  # [n', B, H, w, R, D]
        x = jnp.pad(x, ((0, 0),) * 3 + ((0, wp - width), (0, rp - rows),
                                         (0, depth - x.shape[-1])))
        return x.reshape(-1, wp, rp, depth)

    la, lk, lb = _column_logs(log_row, log_col, n, b, rows)
    # 2. Chunk sums of chunks 0..N-2 (no later chunk reads the last one).
    if layout == "tokens":
        sums = columns.column_outer(cfg, "end", by_token(k), by_token(v.astype(q.dtype)), la)
    else:
        kt = by_column(k, slice(0, n - 1), dkp).swapaxes(-1, -2)
        vc = by_column(v.astype(q.dtype), slice(0, n - 1), dvp)
        sums = columns.column_outer(cfg, "end", kt, vc, la)  # [(N-1)*B*H, W', Dk', Dv']
    # 3. Smoothing and state pass (float32): states[i] is what chunk i+1 reads.
    entering = states.smooth_and_pass(pass_cfg, _by_chunk(sums, n), lk, lb)
    # 4. Inter-chunk reads of chunks 1..N-1.
    entering = entering.reshape(-1, wp, dkp, dvp)
    if layout == "tokens":  # chunk i of the output is chunk i + 1 of the sequence
        inter = columns.column_apply(cfg, "start", by_token(q), entering, la, 1)
        inter = inter.reshape(b, (n - 1) * c, h, dv)
    else:
        inter = columns.column_apply(cfg, "start", by_column(q, slice(1, n), dkp),
                                     entering, la)
        inter = inter.reshape(n - 1, b, h, wp, rp, dvp)[:, :, :, :width, :rows, :dv]
        inter = inter.transpose(1, 0, 4, 3, 2, 5).reshape(b, (n - 1) * c, h, dv)
    return jnp.pad(inter, ((0, 0), (c, 0), (0, 0), (0, 0)))[:, :num_image]


@dataclasses.dataclass(frozen=True)
class _Direct:
    """Statics of a split that runs on the caller's arrays as they lie (`_direct_split`)."""

    intra: masked.Plan
    cols: columns.ColumnConfig
    passes: states.PassConfig
    chunks: int  # N
    batch: int
    width: int

    @property
    def tokens(self) -> int:
        """Tokens per chunk."""
        return self.cols.rows * self.width

    def view(self, x: jax.Array) -> jax.Array:
        """`[B, T, H, D]` as `[B, N, R, W, H, D]`: free."""
        b, _, h, d = x.shape
        return x.reshape(b, self.chunks, self.cols.rows, self.width, h, d)

    def logs(self, log_row: jax.Array, log_col: jax.Array):
        """The log decays as each kernel takes them: `_column_logs`, then per head of the
        intra-chunk kernels."""
        return (*_column_logs(log_row, log_col, self.chunks, self.batch, self.cols.rows),
                self.intra.per_head(log_row), self.intra.per_head(log_col))


def _direct_split(q, v, *, width, num_prefix, rows, n, interpret, backend, block_q, block_k,
                  state_dtype) -> _Direct | None:
    """The statics of the direct split where it applies, else `None`.

    Where the column kernels read the sequence in place ("tokens", GPU), there is no
    prefix slot, the image fills its chunks and the intra-chunk kernels' blocks tile a
    chunk, every kernel of the split can read and write the caller's `[B, T, H, D]`
    arrays, and one `jax.custom_vjp` over the whole split (`_direct`) lets the kernels sum
    the two parts themselves: the intra-chunk kernel adds the inter-chunk reads to its
    output, and its backward kernels add the column kernels' gradients to theirs
    (`masked.Addend`), before their one rounding. Composed from each kernel's own VJP,
    those sums were XLA passes over sequence-sized arrays: the forward's float32 add,
    the three gradient adds and a slice of the output's cotangent, 0.35 GB of the 2.7 GB a
    forward+backward moved at T = 16384 (2048-token chunks, compiled for an H200;
    benchmarks/RESULTS.md). A prefix slot shifts the image off the chunks' block grid, so
    with one (LASADGen's class slot) the split stays a composition of the kernels.
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    _, _, cols, layout = _column_layout(backend, width, rows, (dk, dv))
    if layout != "tokens" or num_prefix or t != n * rows * width:
        return None
    intra = masked.plan(q, width=width, rows_per_chunk=rows, block_q=block_q,
                        block_k=block_k, interpret=interpret, backend=backend,
                        out_dtype=q.dtype)
    tiles = intra.cfg.tiles
    if intra.padded != t or (rows * width) % math.lcm(tiles.block_q, tiles.block_k):
        return None
    cfg, passes = _configs(q.dtype, backend, interpret, rows, dk, dv, state_dtype, cols,
                           layout)
    return _Direct(intra, cfg, passes, n, b, width)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _direct(sp: _Direct, q, k, v, log_row, log_col):
    """`lasad` over whole chunks, no prefix (`_direct_split`): `[B, T, H, Dv]` in q's dtype."""
    return _direct_fwd(sp, q, k, v, log_row, log_col)[0]


def _direct_fwd(sp: _Direct, q, k, v, log_row, log_col):
    b, t, h, dv = v.shape
    la, lk, lb, lr, lc = sp.logs(log_row, log_col)
    sums = columns._outer_call(sp.cols, "end", sp.view(k), sp.view(v), la,
                               sp.cols.state_dtype)
    entering = _state_pass(sp.passes, sums, lk, lb, sp.chunks)
    # Chunk i + 1 reads the states entering it, written where its tokens lie (chunk 0 of
    # the result is left unwritten: the addend's span starts after it).
    inter = columns._apply_call(sp.cols, "start", False, sp.view(q), entering, la, x_off=1,
                                out_to=(sp.chunks, 1))
    add = masked.Addend(inter.reshape(b, t, h, dv), (sp.tokens, t))
    out = masked._forward(sp.intra.cfg, q, k, v, lr, lc, q.dtype, add=add)
    return out, (q, k, v, log_row, log_col, sums, entering)


def _direct_bwd(sp: _Direct, res, do):
    q, k, v, log_row, log_col, sums, entering = res
    t, c = q.shape[1], sp.tokens
    logs, pull_logs = jax.vjp(sp.logs, log_row, log_col)
    la, lk, lb, lr, lc = logs
    # Inter-chunk reads, then the state pass, then the chunk sums, backwards; each
    # gradient written where its tokens lie (dq over chunks 1..N-1, dk and dv over
    # 0..N-2), the rest left unwritten for the intra-chunk kernels' spans to skip.
    dq_c, d_entering, dla_read = columns._apply_grads_call(
        sp.cols, "start", sp.view(q), sp.view(do.astype(q.dtype)), entering, la, offset=1,
        do_off=1, whole=True)
    d_sums, dlk, dlb = _state_pass_grads(sp.passes, sums, lk, lb, d_entering, sp.chunks)
    dk_c, dv_c, dla_sums = columns._outer_grads_call(sp.cols, "end", sp.view(k), sp.view(v),
                                                     d_sums, la, 0, whole=True)
    dq, dk, dv, dlr, dlc = masked._backward(
        sp.intra.cfg, q, k, v, lr, lc, do,
        dq_add=masked.Addend(dq_c.reshape(q.shape), (c, t)),
        dkv_add=(masked.Addend(dk_c.reshape(k.shape), (0, t - c)),
                 masked.Addend(dv_c.reshape(v.shape), (0, t - c))))
    d_log_row, d_log_col = pull_logs((dla_read + dla_sums, dlk, dlb, dlr, dlc))
    return dq, dk, dv, d_log_row, d_log_col


_direct.defvjp(_direct_fwd, _direct_bwd)
