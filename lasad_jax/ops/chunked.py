"""The chunked parallel form: exact, linear in the number of rows, one `lax.scan`.

The image tokens are cut into chunks of about `chunk_size` tokens. For the 2D variants a
chunk is `R` whole grid rows (`R = chunk_size // width`, at least one), so that rows never
straddle chunks. A `jax.lax.scan` walks the chunks. Each step runs the exact masked
quadratic form inside its chunk (two matmuls) and reads the decayed key-value states that
summarise every earlier chunk:

* `lasad` keeps one `Dk x Dv` state per grid column, `A(c) = sum_{earlier rows} a^(r0-r) k v^T`.
  A query at row `r0 + dr`, column `c`, adds `a^dr q . H(c)` with `H = T_b A` the
  cross-column smoothing (`b^|c - c'|`), so every earlier-chunk key gets exactly
  `a^(r_i - r_j) b^|c_i - c_j|`.
* `lasad_row` ignores the column across rows, so its state is the column sum.
* `linear_1d` and `linear` are ordinary chunked linear attention with one state.

All cases are one engine: a chunk is a `[G, S]` block of tokens (`S` = state columns),
`tau[g, s]` is the token's decay clock inside the chunk (row offset for the 2D variants,
token offset for the 1D ones), and the state decays by `a^chunk_tau` per chunk.

Cost per token and head, chunk of `C` tokens: `2 C (Dk + Dv)` for the intra-chunk part,
about `4 Dk Dv` for the states and, for `lasad`, `2 w^2 Dk Dv / C` for the smoothing. For a
fixed width that is constant, so time is linear in the number of rows. For square grids
(`w = sqrt(T)`) the state terms grow with `w`; with `C = 1024` they stay below the
intra-chunk work up to `w = 128` (T = 16384), see benchmarks/RESULTS.md. Each chunk is
rematerialised in the backward pass, so memory is one carried state per chunk boundary
(`w Dk Dv` per head for `lasad`) plus one chunk's `C x C` scores at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lasad_jax.ops.decay import decay_mask, smooth_columns
from lasad_jax.ops.reference import masked_attention

# Tokens per chunk when the caller does not choose. 1024 keeps every sequence of a 256 px
# or 384 px model (T <= 577) in one chunk, i.e. the plain masked form, and keeps the time
# linear in T up to 16k-token square grids (benchmarks/RESULTS.md has the sweep).
DEFAULT_CHUNK_SIZE = 1024


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    remat: bool = True,
) -> jax.Array:
    """Same result as `reference.masked_attention`, in time linear in the number of rows;
    returns float32.

    `remat=False` keeps every chunk's residuals for the backward pass instead of
    recomputing them; it exists to measure that choice (benchmarks/chunk_design.py).
    """
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    num_image = q.shape[1] - num_prefix
    outs = []
    if num_prefix:
        qp, kp, vp = q[:, :num_prefix], k[:, :num_prefix], v[:, :num_prefix]
        # Prefix slots see each other causally and undecayed: the `linear` mask.
        outs.append(
            masked_attention(
                "linear", qp, kp, vp, width=1, num_prefix=0, log_row=log_row, log_col=log_col
            )
        )
    if num_image:
        qi, ki, vi = q[:, num_prefix:], k[:, num_prefix:], v[:, num_prefix:]
        o = _image_attention(
            variant, qi, ki, vi, width, log_row, log_col, chunk_size, remat
        )
        if num_prefix:
            # Every image token sees every prefix slot with weight 1.
            o = o + jnp.einsum("bihd,bjhd,bjhe->bihe", qi, kp, vp)
        outs.append(o)
    return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]


def _image_attention(variant, q, k, v, width, log_row, log_col, chunk_size, remat):
    b, num_image, h, dk = q.shape
    dv = v.shape[-1]
    lay = chunk_layout(variant, width, chunk_size, num_image)
    c, g, s = lay.tokens, lay.groups, lay.state_cols
    n = -(-num_image // c)
    pad = n * c - num_image
    if pad:
        # Padding sits after the last real token, so causality already hides it; zeros
        # keep it out of the states as well.
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    # Chunk-major, head-major layout [n, B, H, C, D]: each einsum below is a batched matmul
    # whose operands and result need no transpose of state-sized arrays.
    qc, kc, vc = (x.reshape(b, n, c, h, -1).transpose(1, 0, 3, 2, 4) for x in (q, k, v))
    # A chunk starts on a row boundary (2D variants), so one mask of relative positions
    # serves every chunk.
    mask = decay_mask(variant, c, 0, width, log_row, log_col)[None]  # [1, H, C, C]

    def intra(qn, kn, vn):
        scores = jnp.einsum("bhtd,bhsd->bhts", qn, kn) * mask
        return jnp.einsum("bhts,bhse->bhte", scores, vn)

    if n == 1:
        out = intra(qc[0], kc[0], vc[0])[None]
    else:
        log_a = log_row if variant != "linear" else jnp.zeros_like(log_row)
        tau = jnp.asarray(lay.tau.T, jnp.float32)[..., None]  # [S, G, 1]
        la = log_a[:, None, None, None]  # [H, 1, 1, 1]
        q_decay = jnp.exp(tau * la)  # a query's decay back to its chunk's start
        k_decay = jnp.exp((lay.chunk_tau - tau) * la)  # a key's decay to its chunk's end
        chunk_decay = jnp.exp(lay.chunk_tau * log_a)[:, None, None, None]

        def body(state, x):
            # state: [B, H, S, Dk, Dv], the keys of all earlier chunks decayed to this
            # chunk's start, one state per column (lasad) or a single one.
            qn, kn, vn = x  # [B, H, C, D]
            out = intra(qn, kn, vn)
            # Token blocks as [B, H, S, G, D]: the tokens of each state column together.
            qg, kg, vg = (y.reshape(b, h, g, s, -1).swapaxes(2, 3) for y in (qn, kn, vn))
            seen = state
            if variant == "lasad":
                seen = smooth_columns(state, log_col)
            inter = jnp.einsum("bhsgd,bhsde->bhsge", qg * q_decay, seen)
            out = out + inter.swapaxes(2, 3).reshape(b, h, c, dv)
            chunk_kv = jnp.einsum("bhsgd,bhsge->bhsde", kg * k_decay, vg)
            return chunk_decay * state + chunk_kv, out

        # Rematerialise each chunk in the backward pass: only the carried states are kept
        # per chunk instead of the C x C scores. It is also faster on CPU, where writing
        # and re-reading the saved scores is memory-bound (benchmarks/RESULTS.md).
        if remat:
            body = jax.checkpoint(body)
        init = jnp.zeros((b, h, s, dk, dv), jnp.float32)
        _, out = jax.lax.scan(body, init, (qc, kc, vc))
    return out.transpose(1, 0, 3, 2, 4).reshape(b, n * c, h, dv)[:, :num_image]
