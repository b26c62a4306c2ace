"""The fused Pallas decoding step of `lasad`: interpret mode on CPU against the quadratic
reference and the XLA step, its lowering for TPU and CUDA, the `impl` switch, and the model
sampling through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.ops.helpers import COL_DECAY, ROW_DECAY, decode_all, random_qkv, rel_err, triton_lowering

from lasad_jax import ops
from lasad_jax.ops import decode
from lasad_jax.ops.pallas.decode import lasad_step_fused
from lasad_jax.sampling import generate
from tests.models.helpers import perturbed_model, small_config

LOGS = dict(log_row=jnp.log(jnp.asarray(ROW_DECAY)), log_col=jnp.log(jnp.asarray(COL_DECAY)))


def fused_decode(q, k, v, *, width: int, num_prefix: int, backend: str):
    """Every slot through the fused step (interpret mode) in one jitted `lax.scan`;
    returns `(o [B, T, H, Dv], final state)`."""
    b, _, h, dk = q.shape

    @jax.jit
    def run(q, k, v):
        def body(s, x):
            o, s = lasad_step_fused(s, *x, num_prefix=num_prefix, backend=backend,
                                    interpret=True, **LOGS)
            return s, o

        init = decode.lasad_init(b, h, dk, v.shape[-1], width)
        final, o = jax.lax.scan(body, init, tuple(x.swapaxes(0, 1) for x in (q, k, v)))
        return o.swapaxes(0, 1), final

    return run(q, k, v)


# (num_prefix, width, tokens): partial last row, width 1, Dk (4) != Dv (6) throughout.
CASES = [(1, 5, 1 + 5 * 3 + 2), (0, 3, 7), (1, 1, 5), (0, 4, 8)]


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("num_prefix, width, tokens", CASES)
def test_fused_step_matches_reference_and_xla_step(backend, num_prefix, width, tokens):
    q, k, v = random_qkv(0, 2, tokens)
    out, state = fused_decode(q, k, v, width=width, num_prefix=num_prefix, backend=backend)
    ref = ops.lasad_attention(q, k, v, width=width, row_decay=jnp.asarray(ROW_DECAY),
                              col_decay=jnp.asarray(COL_DECAY), num_prefix=num_prefix,
                              impl="reference")
    assert rel_err(out, ref) < 1e-5
    xla_out, xla_state = decode_all("lasad", q, k, v, width=width, num_prefix=num_prefix)
    assert rel_err(out, xla_out) < 1e-6
    # Same states, field by field: the in-place column write leaves the rest of the grid
    # exactly as the XLA step's scatter does.
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(xla_state)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_bfloat16_inputs_keep_float32_states():
    q, k, v = random_qkv(1, 2, 1 + 4 * 3, dtype=jnp.bfloat16)
    out, state = fused_decode(q, k, v, width=4, num_prefix=1, backend="tpu")
    xla_out, xla_state = decode_all("lasad", q, k, v, width=4, num_prefix=1)
    assert out.dtype == jnp.bfloat16 and state.grid.dtype == jnp.float32
    assert rel_err(out, xla_out) < 2 ** -8  # one bf16 rounding of the same float32 value
    np.testing.assert_allclose(np.asarray(state.grid), np.asarray(xla_state.grid), rtol=1e-6,
                               atol=1e-6)


def test_impl_switch():
    q, k, v = random_qkv(2, 1, 1 + 3 * 2)
    b, _, h, dk = q.shape
    state = ops.lasad_decode_init(b, h, dk, v.shape[-1], 3)
    args = (state, q[:, 0], k[:, 0], v[:, 0])
    kw = dict(row_decay=jnp.asarray(ROW_DECAY), col_decay=jnp.asarray(COL_DECAY), num_prefix=1)
    xla, _ = ops.lasad_decode_step(*args, impl="xla", **kw)
    fused, _ = ops.lasad_decode_step(*args, impl="pallas", **kw)  # interpret mode on CPU
    np.testing.assert_allclose(np.asarray(fused), np.asarray(xla), rtol=1e-6, atol=1e-6)
    assert ops.select_decode_impl("cpu") == "xla"
    with pytest.raises(ValueError, match=r"impl must be one of .*'pallas'"):
        ops.lasad_decode_step(*args, impl="triton", **kw)


def test_gpu_kernel_needs_power_of_two_heads():
    q, k, v = random_qkv(0, 1, 3)  # Dv = 6
    state = decode.lasad_init(1, q.shape[2], q.shape[3], v.shape[3], 2)
    with pytest.raises(ValueError, match="power-of-two Dv"):
        lasad_step_fused(state, q[:, 0], k[:, 0], v[:, 0], num_prefix=0, backend="gpu", **LOGS)


def _step_fn(backend):
    def f(state, q, k, v, lr, lc):
        return lasad_step_fused(state, q, k, v, log_row=lr, log_col=lc, num_prefix=1,
                                backend=backend)
    return f


def _realistic_args():
    """LASADGen-L's decoding shapes: 16 heads of 64, a 24-column (384 px) grid, batch 4."""
    state = decode.lasad_init(4, 16, 64, 64, 24)
    x = jnp.zeros((4, 16, 64), jnp.bfloat16)
    return (state, x, x, x, jnp.full((16,), -0.1), jnp.full((16,), -0.2))


def test_lowers_for_tpu():
    """One Mosaic kernel per step; the column's block index comes from scalar prefetch."""
    text = jax.jit(_step_fn("tpu")).trace(*_realistic_args()).lower(
        lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 1


def test_lowers_to_triton_for_cuda(monkeypatch):
    """One verified Triton IR module per step (the Pallas-to-Triton lowering only; compiling
    to PTX needs a GPU build)."""
    assert triton_lowering(_step_fn("gpu"), _realistic_args(), monkeypatch) == 1


def test_model_samples_the_same_tokens_through_the_fused_step():
    """The mixer's `decode_impl` reaches the step: greedy sampling of a perturbed model
    gives the same tokens with the XLA step and the fused kernel (interpret mode)."""
    labels = jnp.array([0, 1])
    got = {}
    for impl in ("xla", "pallas"):
        model = perturbed_model(small_config("lasad", grid=(3, 4), decode_impl=impl))
        got[impl] = np.asarray(generate(model, labels, jax.random.key(0), cfg_scale=2.0, top_k=1))
    np.testing.assert_array_equal(got["pallas"], got["xla"])
