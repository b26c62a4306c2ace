"""The softmax baseline's TPU attention (splash attention, `models.tpu_attention`), run in
Pallas' TPU interpreter against XLA's attention: values and gradients, the padding of the
sequence to whole blocks, and the softmax model with it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lasad_jax.models import mixers
from lasad_jax.models.tpu_attention import BLOCK, padded_length, splash_causal
from tests.models.helpers import LABELS, TOKENS, perturbed_model, small_config


def _qkv(t: int, dtype=jnp.float32, b: int = 2, h: int = 2, d: int = 64):
    keys = jax.random.split(jax.random.key(t), 3)
    return [jax.random.normal(key, (b, t, h, d)).astype(dtype) for key in keys]


def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def _loss(attention):
    """A loss that weighs every output differently, so every gradient entry counts."""
    def loss(q, k, v):
        o = attention(q, k, v).astype(jnp.float32)
        return (o * jnp.cos(jnp.arange(o.size).reshape(o.shape))).sum()
    return loss


def test_padded_length_is_whole_blocks():
    assert BLOCK == 128
    assert [padded_length(t) for t in (1, 128, 129, 257, 1025)] == [128, 128, 256, 384, 1152]


@pytest.mark.parametrize("tokens", [128, 257])  # whole blocks; 257 padded to 384
def test_splash_equals_xla_attention_float32(tokens):
    q, k, v = _qkv(tokens)
    out = jax.jit(splash_causal)(q, k, v)
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, _xla(q, k, v), atol=1e-5, rtol=0)
    grads = jax.jit(jax.grad(_loss(splash_causal), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(_loss(_xla), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", grads, want):
        scale = float(jnp.abs(w).max())
        assert float(jnp.abs(g - w).max()) <= 1e-5 * scale, name


def test_splash_in_bfloat16_is_as_close_to_float32_as_xla_attention():
    """bf16 inputs: both kernels against float32 attention of the same (rounded) inputs.
    Measured 2026-12-07 (CPU, the interpreter): splash 2.3e-3, XLA 3.1e-3 of the output's
    largest value."""
    q, k, v = _qkv(257, jnp.bfloat16)
    exact = _xla(*(x.astype(jnp.float32) for x in (q, k, v)))
    scale = float(jnp.abs(exact).max())
    err = {name: float(jnp.abs(fn(q, k, v).astype(jnp.float32) - exact).max()) / scale
           for name, fn in (("splash", jax.jit(splash_causal)), ("xla", _xla))}
    assert err["splash"] <= max(2 * err["xla"], 2.0 ** -8), err


def test_softmax_model_with_splash_attention_equals_xla(monkeypatch):
    """The softmax model's logits and gradients with splash attention (as on a TPU) equal
    those with XLA's attention: a 12-slot sequence, padded to one block inside."""
    model = perturbed_model(small_config("softmax", dim=32))
    graphdef, params = nnx.split(model)

    def loss(params):
        logits = nnx.merge(graphdef, params)(LABELS, TOKENS)
        return (logits * jnp.sin(jnp.arange(logits.size).reshape(logits.shape))).sum(), logits

    want = jax.jit(jax.grad(loss, has_aux=True))(params)
    monkeypatch.setattr(mixers, "attention_impl", lambda q: "splash")
    got = jax.jit(jax.grad(loss, has_aux=True))(params)
    scale = float(jnp.abs(want[1]).max())
    np.testing.assert_allclose(got[1], want[1], atol=1e-5 * scale, rtol=0)
    for g, w in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
        np.testing.assert_allclose(g, w, atol=1e-5 * max(float(jnp.abs(w).max()), 1e-3),
                                   rtol=0)
