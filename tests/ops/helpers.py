"""Shared helpers for the operator tests: random inputs, the per-variant call table, the
quadratic reference in the kernels' signature and a Triton lowering probe."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lasad_jax import ops

# Three heads whose decays cover 1.0 (no decay), <= 0.3 (sharp) and values in between.
ROW_DECAY = np.array([1.0, 0.8, 0.25], np.float32)
COL_DECAY = np.array([0.3, 1.0, 0.9], np.float32)
HEADS, DK, DV = 3, 4, 6


def random_qkv(seed: int, batch: int, tokens: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, tokens, HEADS, DK))
    k = rng.normal(size=(batch, tokens, HEADS, DK))
    v = rng.normal(size=(batch, tokens, HEADS, DV))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def decay_kwargs(variant: str, width: int, row=ROW_DECAY, col=COL_DECAY) -> dict:
    row, col = jnp.asarray(row), jnp.asarray(col)
    if variant in ("lasad", "lasad_row"):
        return dict(width=width, row_decay=row, col_decay=col)
    if variant == "linear_1d":
        return dict(decay=col)
    return {}


PARALLEL = {
    "lasad": ops.lasad_attention,
    "lasad_row": ops.lasad_row_attention,
    "linear_1d": ops.linear_1d_attention,
    "linear": ops.linear_attention,
}


def decode_all(variant: str, q, k, v, *, width: int, num_prefix: int, row=ROW_DECAY, col=COL_DECAY,
               state=None, impl: str = "auto", norm_eps: float | None = None,
               out_scale=None):
    """Feeds every slot through the decoding step inside one jitted `lax.scan`, from
    `state` (default: the variant's empty float32 state); `impl`, `norm_eps` and
    `out_scale` (the same at every slot) are the `lasad` step's."""
    initial = state
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    row, col = jnp.asarray(row), jnp.asarray(col)
    if variant == "lasad":
        state = ops.lasad_decode_init(b, h, dk, dv, width, prefix_slots=num_prefix)
        def step(s, x):
            return ops.lasad_decode_step(s, *x, row_decay=row, col_decay=col,
                                         num_prefix=num_prefix, impl=impl,
                                         norm_eps=norm_eps, out_scale=out_scale)
    elif variant == "lasad_row":
        state = ops.lasad_row_decode_init(b, h, dk, dv, width)
        def step(s, x):
            return ops.lasad_row_decode_step(s, *x, row_decay=row, col_decay=col,
                                             num_prefix=num_prefix)
    elif variant == "linear_1d":
        state = ops.linear_1d_decode_init(b, h, dk, dv)
        def step(s, x):
            return ops.linear_1d_decode_step(s, *x, decay=col, num_prefix=num_prefix)
    else:
        state = ops.linear_decode_init(b, h, dk, dv)
        def step(s, x):
            return ops.linear_decode_step(s, *x, num_prefix=num_prefix)

    state = state if initial is None else initial

    @jax.jit
    def run(state, q, k, v):
        def body(s, x):
            o, s = step(s, x)
            return s, o

        final, o = jax.lax.scan(body, state, tuple(x.swapaxes(0, 1) for x in (q, k, v)))
        return o.swapaxes(0, 1), final

    return run(state, q, k, v)


def lasad_reference_fn(width: int, num_prefix: int):
    """The quadratic LASAD form as `f(q, k, v, log_row, log_col)`, the kernels' signature."""
    from lasad_jax.ops.reference import masked_attention

    def f(q, k, v, lr, lc):
        return masked_attention("lasad", q, k, v, width=width, num_prefix=num_prefix,
                                log_row=lr, log_col=lc)
    return f


def vjp_at(fn, args, cotangent):
    """`(fn(*args), gradients of <fn(*args), cotangent> for every arg)`."""
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(cotangent.astype(out.dtype))


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


def triton_lowering(fn, args, monkeypatch, texts: list | None = None,
                    program: list | None = None) -> int:
    """Lowers `jax.jit(fn)` for CUDA on this CPU machine; returns how many Triton kernels
    it emitted, each verified as a Triton IR module (shapes and types). `texts`, when
    given, receives each module's IR as text; `program`, the lowered program's (StableHLO)."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    modules = []
    lower_module = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*a, **kw):
        result = lower_module(*a, **kw)
        modules.append(result.module)
        return result

    monkeypatch.setattr(registration.lowering, "lower_jaxpr_to_triton_module", capture)
    info = getattr(registration, "gpu_info_lib", None)
    if info is not None:
        # From JAX 0.11 the lowering asks the device for its compute capability; with no
        # GPU here it is told it lowers for an H200, the GPU our benchmarks run on.
        h200 = info.get_gpu_info_from_version(info.GpuVersion.H200)
        monkeypatch.setattr(info, "get_gpu_info", lambda: h200)
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert all(m.operation.verify() for m in modules)
    n_calls = text.count("custom_call @__gpu$xla.gpu.triton")
    assert n_calls == len(modules)
    if texts is not None:
        texts.extend(str(m) for m in modules)
    if program is not None:
        program.append(text)
    return n_calls
