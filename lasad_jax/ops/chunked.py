"""The chunked parallel form: linear in T, exact, built from matmuls and one `lax.scan`.

The image tokens are cut into chunks of about `chunk_size` tokens. For the 2D variants a
chunk is `R` whole grid rows (`R = chunk_size // width`, at least one), so that rows never
straddle chunks. Inside a chunk the masked quadratic form runs as batched matmuls over all
chunks at once. Between chunks a `jax.lax.scan` carries the decayed key-value states:

* `lasad` keeps one `Dk x Dv` state per grid column, `A(c) = sum_{earlier rows} a^(r0-r) k v^T`.
  A query at row `r0 + dr`, column `c`, adds `a^dr q . H(c)` with `H = T_b A` the
  cross-column smoothing (`b^|c - c'|`), so every earlier-chunk key gets exactly
  `a^(r_i - r_j) b^|c_i - c_j|`.
* `lasad_row` ignores the column across rows, so its state is the column sum.
* `linear_1d` and `linear` are ordinary chunked linear attention with one state.

All three cases are one engine: a chunk is a `[G, S]` block of tokens (`S` = state
columns), `tau[g, s]` is the token's decay clock inside the chunk (row offset for the 2D
variants, token offset for the 1D ones), and the state decays by `a^chunk_tau` per chunk.

Cost per token: about `2 C (Dk + Dv)` for the intra-chunk part, a few `Dk Dv` for the
states, plus the smoothing (`w Dk Dv / R` as a Toeplitz matmul or `O(Dk Dv / R)` as two
scans). Memory: the `C x C` scores per chunk and one state per chunk boundary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lasad_jax.ops.decay import decay_mask, smooth_columns
from lasad_jax.ops.reference import masked_attention

# Tokens per chunk when the caller does not choose (measured in benchmarks/op_scaling.py).
DEFAULT_CHUNK_SIZE = 512


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
    smoothing: str = "auto",
) -> jax.Array:
    """Same result as `reference.masked_attention`, in `O(T)`; returns float32."""
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
            variant, qi, ki, vi, width, log_row, log_col, chunk_size, smoothing
        )
        if num_prefix:
            # Every image token sees every prefix slot with weight 1.
            o = o + jnp.einsum("bihd,bjhd,bjhe->bihe", qi, kp, vp)
        outs.append(o)
    return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]


def _image_attention(variant, q, k, v, width, log_row, log_col, chunk_size, smoothing):
    b, num_image, h, dk = q.shape
    dv = v.shape[-1]
    lay = chunk_layout(variant, width, chunk_size, num_image)
    c = lay.tokens
    n = -(-num_image // c)
    pad = n * c - num_image
    if pad:
        # Padding sits after the last real token, so causality already hides it; zeros
        # keep it out of the states as well.
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))

    # Intra-chunk: the exact masked form, batched over every chunk. A chunk starts on a
    # row boundary (2D variants), so the mask of relative positions is the same for all.
    mask = decay_mask(variant, c, 0, width, log_row, log_col)  # [H, C, C]
    qc, kc, vc = (x.reshape(b, n, c, h, -1) for x in (q, k, v))
    scores = jnp.einsum("bnthd,bnshd->bnhts", qc, kc) * mask[None, None]
    out = jnp.einsum("bnhts,bnshe->bnthe", scores, vc)
    if n == 1:
        return out.reshape(b, c, h, dv)[:, :num_image]

    # Inter-chunk: decayed states carried by a scan over chunks.
    g, s = lay.groups, lay.state_cols
    qg, kg, vg = (x.reshape(b, n, g, s, h, -1) for x in (q, k, v))
    log_a = log_row if variant != "linear" else jnp.zeros_like(log_row)
    tau = jnp.asarray(lay.tau, jnp.float32)[None, None, :, :, None, None]
    la = log_a[None, None, None, None, :, None]
    # Each key's contribution, decayed to the end of its chunk, summed per state column.
    k_end = kg * jnp.exp((lay.chunk_tau - tau) * la)
    chunk_kv = jnp.einsum("bngshd,bngshe->nbshde", k_end, vg)  # [n, B, S, H, Dk, Dv]
    chunk_decay = jnp.exp(lay.chunk_tau * log_a)[:, None, None]  # [H, 1, 1]

    def step(state, kv):
        return chunk_decay * state + kv, state  # emit the state *before* this chunk

    _, states = jax.lax.scan(step, jnp.zeros((b, s, h, dk, dv), jnp.float32), chunk_kv)
    if variant == "lasad":
        states = smooth_columns(states, log_col, col_axis=2, head_axis=3, method=smoothing)
    q_start = qg * jnp.exp(tau * la)  # a query's decay back to its chunk's start
    inter = jnp.einsum("bngshd,nbshde->bngshe", q_start, states)
    out = out + inter.reshape(b, n, c, h, dv)
    return out.reshape(b, n * c, h, dv)[:, :num_image]
