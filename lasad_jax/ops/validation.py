"""Argument checks shared by the parallel and decoding forms.

Every check raises `ValueError` naming the argument and what was expected, before any
computation starts. Decay values are checked only when they are concrete: under
`jax.jit` they are tracers, and a data-dependent check there would cost a device sync.
So `check_decay` also makes a traced decay of exactly 0 safe (`decay.LOG_ZERO`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lasad_jax.ops.decay import LOG_ZERO


def check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float_dtype(name: str, dtype: Any) -> jnp.dtype:
    """A floating dtype, given as a dtype, a type or a name ("bfloat16")."""
    try:
        found = jnp.dtype(dtype)
    except TypeError:
        found = None
    if found is None or not jnp.issubdtype(found, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype such as float32 or bfloat16, "
                         f"got {dtype!r}")
    return found


def check_positive_float(name: str, value: Any) -> float:
    """A finite number > 0 (a Python or numpy scalar, not a bool)."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number))
            or not math.isfinite(value) or not value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def fused_decode_head_problem(dk: int, dv: int) -> str | None:
    """Why the fused Pallas decoding step (`decode_impl="pallas"`) cannot compile for a
    GPU with these head sizes (Triton tiles have power-of-two sides of 16 or more), or
    None. The one rule, for the kernel and for the config check that finds it early."""
    for name, d in (("Dk", dk), ("Dv", dv)):
        if d < 16 or d & (d - 1):
            return f"needs {name} a power of two >= 16 on GPU (Triton tiles), got {d}"
    return None


def check_float_array(name: str, x: Any, ndim: int, layout: str) -> jax.Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name} must be an array of shape {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} ({layout}), got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype (float32, bfloat16, ...), "
                         f"got {x.dtype}")
    return x


def check_qkv(q: Any, k: Any, v: Any, *, token_axis: bool) -> tuple[int, int, int, int, int]:
    """Checks q/k/v ranks, one shared floating dtype and agreeing shapes; returns
    (B, T, H, Dk, Dv).

    With `token_axis` the layout is `[batch, T, heads, D]` (parallel form), otherwise
    `[batch, heads, D]` (one decoding step; T is reported as 1).
    """
    ndim, layout = (4, "[batch, T, heads, D]") if token_axis else (3, "[batch, heads, D]")
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float_array(name, x, ndim, layout)
    lead = q.shape[:-1]
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:-1] != lead:
        raise ValueError(
            f"v must have shape {tuple(lead) + ('Dv',)} (q's leading dims), got {tuple(v.shape)}"
        )
    if token_axis:
        b, t, h, dk = q.shape
    else:
        (b, h, dk), t = q.shape, 1
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one dtype (the forms compute in q's and would "
                         f"silently round k and v to it), got q {q.dtype}, k {k.dtype}, "
                         f"v {v.dtype}")
    if 0 in (b, h, dk, v.shape[-1]):
        raise ValueError(f"q, k, v must hold at least one batch element, head and feature "
                         f"(batch, heads, Dk, Dv >= 1), got q {tuple(q.shape)}, v "
                         f"{tuple(v.shape)}")
    return b, t, h, dk, v.shape[-1]


def check_decay(name: str, decay: Any, heads: int) -> jax.Array:
    """Checks a `[heads]` decay in (0, 1]; returns its log in float32.

    Integer arrays (`[1, 1]`) are taken as float32. Concrete values outside (0, 1] are
    refused; a traced decay of exactly 0 gets the log `LOG_ZERO`, so every form weighs
    distance 0 by 1 and longer distances by 0. Its gradient there is 0 (finite, though the
    distance-1 weight's true derivative is 1): the log has none to give at 0.
    """
    decay = jnp.asarray(decay) if isinstance(decay, (list, tuple, np.ndarray)) else decay
    if hasattr(decay, "dtype") and jnp.issubdtype(decay.dtype, jnp.integer):
        decay = decay.astype(jnp.float32)
    check_float_array(name, decay, 1, "[heads]")
    if decay.shape[0] != heads:
        raise ValueError(f"{name} must have shape [heads] = ({heads},), got {tuple(decay.shape)}")
    if not isinstance(decay, jax.core.Tracer):
        values = np.asarray(decay, dtype=np.float32)
        if not np.all((values > 0) & (values <= 1)):
            raise ValueError(f"{name} values must lie in (0, 1], got {values.tolist()}")
    decay = decay.astype(jnp.float32)
    # The inner `where` keeps log's infinite derivative at 0 out of the gradient.
    zero = decay == 0
    return jnp.where(zero, LOG_ZERO, jnp.log(jnp.where(zero, 1.0, decay)))


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
