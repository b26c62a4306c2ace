"""The fused `lasad` decoding step (`decode_impl="pallas"`, lasad_jax/ops/pallas/decode.py)
against the quadratic reference and the XLA step, in Pallas' interpreter; and its Triton
lowering for CUDA.

Grid as the XLA step's tests (tests/ops/test_chunked_decode.py): widths 1, 2 and 5 (a
ring shorter than one 16-slot load: padded), 16, and 24 (32-slot loads shifted back from
the row's start), partial last rows, 0-3 prefix slots (3: a 4-slot prefix load shifted
into the grid rows), decays 1.0, in between and <= 0.3, Dk != Dv.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax import ops
from lasad_jax.ops import decode
from lasad_jax.ops.pallas.decode import token_update
from tests.ops.helpers import (COL_DECAY, DK, DV, HEADS, ROW_DECAY, decay_kwargs, decode_all,
                               random_qkv, rel_err, triton_lowering)

GRIDS = [(1, 6, 1), (2, 7, 0), (5, 13, 1), (16, 53, 2), (24, 60, 1), (24, 55, 3)]


@pytest.mark.parametrize("width,num_image,num_prefix", GRIDS)
def test_pallas_step_matches_reference_and_xla_step(width, num_image, num_prefix):
    q, k, v = random_qkv(width + num_prefix, 2, num_prefix + num_image)
    ref = ops.lasad_attention(q, k, v, num_prefix=num_prefix, impl="reference",
                              **decay_kwargs("lasad", width))
    fused, fused_state = decode_all("lasad", q, k, v, width=width, num_prefix=num_prefix,
                                    impl="pallas")
    xla, xla_state = decode_all("lasad", q, k, v, width=width, num_prefix=num_prefix,
                                impl="xla")
    assert rel_err(fused, ref) < 1e-5, rel_err(fused, ref)
    assert rel_err(fused_state.cols, xla_state.cols) < 1e-6
    np.testing.assert_array_equal(np.asarray(fused_state.keys), np.asarray(xla_state.keys))
    assert int(fused_state.pos) == num_prefix + num_image
    assert rel_err(fused, xla) < 1e-6


@pytest.mark.parametrize("width,num_image,dk,dv,norm_eps", [
    (5, 13, 16, 32, None), (24, 60, 16, 32, None), (32, 70, 64, 64, 1e-5)])
def test_pallas_step_at_kernel_head_sizes(width, num_image, dk, dv, norm_eps):
    """Head sizes the GPU kernel takes (powers of two >= 16; 64 is LASADGen's, with the
    head norm and an output scale as the model runs it), so this test runs the Triton
    kernel itself on a GPU (benchmarks/device_check.sh, stage pallas_tests) and the
    interpreter on CPU."""
    rng = np.random.default_rng(width)
    b, h, num_prefix = 2, 3, 1
    t = num_prefix + num_image
    q, k = (jnp.asarray(rng.normal(size=(b, t, h, dk)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(b, t, h, dv)), jnp.float32)
    ref = ops.lasad_attention(q, k, v, num_prefix=num_prefix, impl="reference",
                              **decay_kwargs("lasad", width))
    scale = None
    if norm_eps is not None:
        ref = ref * jax.lax.rsqrt(jnp.mean(ref * ref, axis=-1, keepdims=True) + norm_eps)
        scale = jnp.asarray(rng.uniform(0.1, 2.0, size=(b, h, dv)), jnp.float32)
        ref = ref * scale[:, None]
    fused, final = decode_all("lasad", q, k, v, width=width, num_prefix=num_prefix,
                              impl="pallas", norm_eps=norm_eps, out_scale=scale)
    assert rel_err(fused, ref) < 1e-5, rel_err(fused, ref)
    assert int(final.pos) == t


def test_pallas_step_with_bfloat16_states_and_inputs():
    """bf16 model inputs, bf16 keys and column states: the fused update rounds the new
    column once, as the XLA step does, so the two agree to bf16 rounding of the state."""
    width, num_image = 5, 17
    q, k, v = random_qkv(3, 2, 1 + num_image, dtype=np.float32)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    outs = {}
    for impl in ("xla", "pallas"):
        state = ops.lasad_decode_init(2, HEADS, DK, DV, width, jnp.bfloat16, prefix_slots=1,
                                      kv_dtype=jnp.bfloat16)
        outs[impl], final = decode_all("lasad", q, k, v, width=width, num_prefix=1,
                                       state=state, impl=impl)
        assert final.cols.dtype == jnp.bfloat16 and outs[impl].dtype == jnp.bfloat16
    assert rel_err(outs["pallas"], outs["xla"]) < 2e-2, rel_err(outs["pallas"], outs["xla"])


def test_auto_runs_the_measured_step():
    """Nothing has timed the fused step faster yet: "auto" is the XLA step everywhere."""
    assert ops.DECODE_AUTO_TABLE == (("*", "xla"),)
    assert ops.select_decode_impl("gpu") == ops.select_decode_impl("tpu") == "xla"
    state = ops.lasad_decode_init(1, HEADS, DK, DV, 3)
    x = jnp.ones((1, HEADS, DK))
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'xla', 'pallas'\)"):
        ops.lasad_decode_step(state, x, x, jnp.ones((1, HEADS, DV)), row_decay=ROW_DECAY,
                              col_decay=COL_DECAY, impl="triton")


def test_lowers_to_one_triton_kernel_for_cuda(monkeypatch):
    """One Triton kernel per token at the model's head size, as the model calls it (head
    norm and output scale); nothing else is Pallas."""
    b, h, d, w = 2, 4, 64, 16
    state = ops.lasad_decode_init(b, h, d, d, w, prefix_slots=1, kv_dtype=jnp.bfloat16)
    x = jnp.ones((b, h, d), jnp.bfloat16)
    step = functools.partial(decode.lasad_step, num_prefix=1, norm_eps=1e-5,
                             token_update=functools.partial(token_update, interpret=False))
    logs = jnp.log(jnp.full((h,), 0.5))
    def fn(s, q):
        return step(s, q, q, q, log_row=logs, log_col=logs, out_scale=q)
    texts: list[str] = []
    assert triton_lowering(fn, (state, x), monkeypatch, texts) == 1
    assert "tt.dot" in texts[0]  # the previous row's product runs as one on-chip matmul


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_norm_eps_returns_the_head_normalized_output(impl):
    """`norm_eps`: each head's output RMS-normalized over Dv (the mixer's head norm, which
    the fused kernel applies on chip), against the normalized quadratic reference; a
    wrong value of it is one clear error."""
    width, num_prefix, eps = 5, 1, 1e-3
    q, k, v = random_qkv(3, 2, num_prefix + 13)
    ref = ops.lasad_attention(q, k, v, num_prefix=num_prefix, impl="reference",
                              **decay_kwargs("lasad", width))
    ref = ref * jax.lax.rsqrt(jnp.mean(ref * ref, axis=-1, keepdims=True) + eps)
    state = ops.lasad_decode_init(2, HEADS, DK, DV, width, prefix_slots=num_prefix)

    def body(s, x):
        o, s = ops.lasad_decode_step(s, *x, row_decay=ROW_DECAY, col_decay=COL_DECAY,
                                     num_prefix=num_prefix, impl=impl, norm_eps=eps)
        return s, o

    _, o = jax.lax.scan(body, state, tuple(x.swapaxes(0, 1) for x in (q, k, v)))
    assert rel_err(o.swapaxes(0, 1), ref) < 1e-5
    with pytest.raises(ValueError, match="norm_eps must be a finite number > 0"):
        ops.lasad_decode_step(state, q[:, 0], k[:, 0], v[:, 0], row_decay=ROW_DECAY,
                              col_decay=COL_DECAY, norm_eps=0.0)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_out_scale_multiplies_the_normalized_output(impl):
    """`out_scale` (the mixer's head-norm weight times its gate) multiplies each head's
    normalized output feature by feature, against the quadratic reference; in bfloat16
    the product is formed in float32 and rounded once; a wrong shape is one clear error."""
    width, num_prefix, eps = 5, 1, 1e-3
    rng = np.random.default_rng(7)
    q, k, v = random_qkv(3, 2, num_prefix + 13)
    scale = jnp.asarray(rng.uniform(-2.0, 2.0, size=(2, HEADS, DV)), jnp.float32)
    ref = ops.lasad_attention(q, k, v, num_prefix=num_prefix, impl="reference",
                              **decay_kwargs("lasad", width))
    ref = ref * jax.lax.rsqrt(jnp.mean(ref * ref, axis=-1, keepdims=True) + eps)
    o, _ = decode_all("lasad", q, k, v, width=width, num_prefix=num_prefix, impl=impl,
                      norm_eps=eps, out_scale=scale)
    assert rel_err(o, ref * scale[:, None]) < 1e-5
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    o16, _ = decode_all("lasad", q16, k16, v16, width=width, num_prefix=num_prefix,
                        impl=impl, norm_eps=eps, out_scale=scale.astype(jnp.bfloat16))
    assert o16.dtype == jnp.bfloat16
    assert rel_err(o16, ref * scale[:, None]) < 2e-2
    state = ops.lasad_decode_init(2, HEADS, DK, DV, width, prefix_slots=num_prefix)
    with pytest.raises(ValueError, match=r"out_scale must have v's shape \[batch, heads, Dv\]"):
        ops.lasad_decode_step(state, q[:, 0], k[:, 0], v[:, 0], row_decay=ROW_DECAY,
                              col_decay=COL_DECAY, out_scale=scale[:, :, :2])


@pytest.mark.parametrize("bad", [0.0, -1e-5, True, "1e-5", float("inf"), float("nan")])
def test_norm_eps_rejects_what_is_not_a_positive_number(bad):
    state = ops.lasad_decode_init(1, HEADS, DK, DV, 4)
    x = jnp.ones((1, HEADS, DK))
    with pytest.raises(ValueError, match="norm_eps must be a finite number > 0"):
        ops.lasad_decode_step(state, x, x, jnp.ones((1, HEADS, DV)), row_decay=ROW_DECAY,
                              col_decay=COL_DECAY, norm_eps=bad)


def test_numpy_scalars_and_arrays_are_checked_as_such():
    """A numpy float is a valid norm_eps (it was refused as "not a positive float"); an
    out_scale that is not an array, or not a float one, is named rather than failing on
    `.shape`; dtypes are given by name too, and a name that is none is named."""
    state = ops.lasad_decode_init(1, HEADS, DK, DV, 4)
    x, v = jnp.ones((1, HEADS, DK)), jnp.ones((1, HEADS, DV))
    kw = dict(row_decay=ROW_DECAY, col_decay=COL_DECAY)
    o32, _ = ops.lasad_decode_step(state, x, x, v, norm_eps=np.float32(1e-5), **kw)
    o, _ = ops.lasad_decode_step(state, x, x, v, norm_eps=1e-5, **kw)
    np.testing.assert_array_equal(o32, o)
    with pytest.raises(ValueError, match=r"out_scale must be an array of shape \[batch, heads"):
        ops.lasad_decode_step(state, x, x, v, out_scale=[1.0], **kw)
    with pytest.raises(ValueError, match="out_scale must have a floating dtype"):
        ops.lasad_decode_step(state, x, x, v, out_scale=jnp.ones((1, HEADS, DV), int), **kw)
    assert ops.lasad_decode_init(1, HEADS, DK, DV, 4, "bfloat16").cols.dtype == jnp.bfloat16
    for init, kw in ((ops.lasad_decode_init, dict(dtype="foo")),
                     (ops.lasad_decode_init, dict(kv_dtype="foo")),
                     (ops.linear_decode_init, dict(dtype="int32"))):
        args = (1, HEADS, DK, DV, 4) if init is ops.lasad_decode_init else (1, HEADS, DK, DV)
        name = next(iter(kw))
        with pytest.raises(ValueError, match=f"{name} must be a floating dtype such as "
                                             f"float32 or bfloat16, got '{kw[name]}'"):
            init(*args, **kw)


def test_gpu_kernel_needs_power_of_two_heads():
    state = ops.lasad_decode_init(1, 2, 24, 24, 4)
    x = jnp.ones((1, 2, 24))
    with pytest.raises(ValueError, match="Dk a power of two >= 16"):
        token_update(state.cols, state.keys, state.values, x, x, x, jnp.zeros((2,)),
                     jnp.zeros((2,)), jnp.int32(0), jnp.int32(0), jnp.int32(0),
                     interpret=False)


def test_kernels_follow_the_default_device(monkeypatch):
    """`ops.platform.target_platform`: the configured default device's platform when one
    is set (a GPU compiled for ahead of time: "cuda" -> "gpu"), else the default
    backend."""
    import types

    from lasad_jax.ops import platform

    def configured(device):
        fake = types.SimpleNamespace(config=types.SimpleNamespace(jax_default_device=device),
                                     default_backend=lambda: "cpu")
        monkeypatch.setattr(platform, "jax", fake)
        return platform.target_platform()

    assert configured(None) == "cpu"
    assert configured(types.SimpleNamespace(platform="cuda")) == "gpu"
    assert configured(types.SimpleNamespace(platform="tpu")) == "tpu"
    assert configured("rocm") == "gpu"
