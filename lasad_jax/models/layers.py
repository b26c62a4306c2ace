"""Building blocks shared by every mixer: RMSNorm, SwiGLU, 2D RoPE, initialisers.

Every parameter names the meaning of its axes in `logical_axes` metadata ("embed",
"mlp", "heads", "vocab", "classes", "norm"); `lasad_jax.parallel.rules` maps them to mesh
axes, so the model itself never mentions devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# LlamaGen initialises every weight N(0, 0.02) except the zero output head.
INIT = nnx.initializers.normal(stddev=0.02)


Axes = tuple[str | None, str | None]


def linear(din: int, dout: int, dtype, rngs: nnx.Rngs, *, axes: Axes, init=INIT) -> nnx.Linear:
    """A bias-free projection whose parameters stay float32 and compute runs in `dtype`;
    `axes` are the logical names of the (input, output) axes of its kernel."""
    return nnx.Linear(din, dout, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=init, kernel_metadata={"logical_axes": axes}, rngs=rngs)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32 whatever the compute dtype (bf16 sums of squares
    lose too much precision), cast back to the input dtype."""

    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...]).astype(x.dtype)


class SwiGLU(nnx.Module):
    def __init__(self, dim: int, hidden: int, dtype, rngs: nnx.Rngs):
        self.w_gate = linear(dim, hidden, dtype, rngs, axes=("embed", "mlp"))
        self.w_up = linear(dim, hidden, dtype, rngs, axes=("embed", "mlp"))
        self.w_down = linear(hidden, dim, dtype, rngs, axes=("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w_down(jax.nn.silu(self.w_gate(x)) * self.w_up(x))


def grid_positions(slots: jax.Array, num_prefix: int,
                   width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(row, col, is_image) of sequence slots: prefix slots first, then raster order."""
    p = jnp.maximum(slots - num_prefix, 0)
    return p // width, p % width, slots >= num_prefix


def rope_2d(x: jax.Array, slots: jax.Array, *, num_prefix: int, width: int,
            base: float) -> jax.Array:
    """Rotates `x: [..., T, heads, D]` by the 2D position of each slot.

    The first half of D turns with the row index, the second half with the column
    index (LlamaGen's 2D RoPE layout), so `q_i . k_j` depends on (dr, dc) only. Prefix
    slots are not rotated. `slots: [T]` (or a scalar for one decoding step).
    """
    d = x.shape[-1]
    quarter = d // 4
    freqs = base ** (-jnp.arange(quarter, dtype=jnp.float32) / quarter)
    row, col, is_image = grid_positions(slots, num_prefix, width)
    ang_r = row[..., None].astype(jnp.float32) * freqs
    ang_c = col[..., None].astype(jnp.float32) * freqs
    ang = jnp.where(is_image[..., None], jnp.concatenate([ang_r, ang_c], -1), 0.0)
    cos, sin = jnp.cos(ang)[..., None, :], jnp.sin(ang)[..., None, :]  # [T, 1, D/2]
    x32 = x.astype(jnp.float32)
    # Pairs (x[i], x[i + D/4]) inside each half rotate together.
    halves = x32.reshape(*x.shape[:-1], 2, 2, quarter)          # [..., axis, pair, quarter]
    a, b = halves[..., 0, :], halves[..., 1, :]                 # [..., axis, quarter]
    cos = cos.reshape(*cos.shape[:-1], 2, quarter)
    sin = sin.reshape(*sin.shape[:-1], 2, quarter)
    out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-2)
    return out.reshape(x.shape).astype(x.dtype)
