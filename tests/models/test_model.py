"""LASADGen: parallel vs decoding logits, causality, parameter counts, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lasad_jax.models import MIXERS, LASADGen, ModelConfig, param_count
from lasad_jax.models.lasadgen import REMAT_POLICIES
from lasad_jax.models.presets import LLAMAGEN_PARAMS, preset_config
from tests.models.helpers import LABELS, TOKENS, decode_logits, perturbed_model, small_config



@pytest.mark.parametrize("mixer", MIXERS)
def test_parallel_logits_equal_decoding_logits(mixer):
    model = perturbed_model(small_config(mixer))
    parallel = model(LABELS, TOKENS)
    assert parallel.shape == (2, 12, 11) and parallel.dtype == jnp.float32
    decoded = decode_logits(model, LABELS, TOKENS)
    scale = float(jnp.max(jnp.abs(parallel)))
    assert scale > 0.5
    np.testing.assert_allclose(decoded, parallel, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("mixer", ["lasad", "linear"])
@pytest.mark.parametrize("gate,gate_rank", [("silu", 4), ("sigmoid", 0), ("none", 4)])
def test_decoding_logits_for_every_gate(mixer, gate, gate_rank):
    """The decoding form projects q, k, v and the gate's input in one matmul and the
    `lasad` step applies the gate in its epilogue: the same logits as the parallel form
    for each gate, low rank or full (the test above covers the default sigmoid gate)."""
    model = perturbed_model(small_config(mixer, gate=gate, gate_rank=gate_rank))
    parallel = model(LABELS, TOKENS)
    scale = float(jnp.max(jnp.abs(parallel)))
    np.testing.assert_allclose(decode_logits(model, LABELS, TOKENS), parallel,
                               atol=1e-4 * scale, rtol=0)


def test_mixers_differ():
    """The equality above would be vacuous if the mixer did not matter."""
    logits = {m: perturbed_model(small_config(m))(LABELS, TOKENS) for m in MIXERS}
    for a in MIXERS:
        for b in MIXERS:
            if a < b:
                assert float(jnp.max(jnp.abs(logits[a] - logits[b]))) > 1e-2, (a, b)


@pytest.mark.parametrize("mixer", ["lasad", "softmax"])
def test_causal(mixer):
    """Changing image token j leaves the logits of slots 0..j unchanged (slot j predicts
    token j) and changes later ones."""
    model = perturbed_model(small_config(mixer))
    base = model(LABELS, TOKENS)
    j = 5
    changed = model(LABELS, TOKENS.at[:, j].set((TOKENS[:, j] + 1) % 11))
    np.testing.assert_allclose(changed[:, : j + 1], base[:, : j + 1], atol=1e-6)
    assert float(jnp.max(jnp.abs(changed[:, j + 1:] - base[:, j + 1:]))) > 1e-3


def test_zero_head_starts_uniform():
    model = LASADGen(small_config("lasad"), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model(LABELS, TOKENS), 0.0)


def test_param_count_matches_formula():
    """An independent count of the tiny LASAD model from the architecture's definition."""
    cfg = small_config("lasad")
    d, r, hidden, heads = cfg.dim, cfg.gate_rank, cfg.mlp_hidden, cfg.num_heads
    per_layer = 4 * d * d + 2 * d * r + 3 * d * hidden + 2 * d + d + 2 * heads
    expected = (cfg.vocab_size * d * 2 + (cfg.num_classes + 1) * d
                + cfg.num_layers * per_layer + d)
    assert hidden == 256  # int(2 * 4 * 16 / 3) = 42, rounded up to a multiple of 256
    assert param_count(cfg) == expected
    softmax = small_config("softmax")
    assert param_count(softmax) == expected - cfg.num_layers * (2 * d * r + d + 2 * heads)


def test_a_gate_rank_of_dim_or_more_builds_the_full_gate():
    """Rank `dim` limits nothing: two factors would only add parameters."""
    dim = small_config("lasad").dim
    full = param_count(small_config("lasad", gate_rank=0))
    for rank in (dim, 4 * dim):
        cfg = small_config("lasad", gate_rank=rank)
        assert cfg.gate_factor_rank == 0 and param_count(cfg) == full
        mixer = LASADGen(cfg, rngs=nnx.Rngs(0)).blocks[0].mixer
        assert not hasattr(mixer, "gate_down") and mixer.gate_up.kernel.shape == (dim, dim)
    low = small_config("lasad", gate_rank=dim // 4)
    assert param_count(low) == full - low.num_layers * (dim * dim - 2 * dim * (dim // 4))


@pytest.mark.parametrize("preset", sorted(LLAMAGEN_PARAMS))
def test_presets_within_three_percent_of_llamagen(preset):
    for mixer in ("lasad", "softmax"):
        count = param_count(preset_config(preset, mixer))
        assert abs(count / LLAMAGEN_PARAMS[preset] - 1) < 0.03, (preset, mixer, count)


def test_bfloat16_compute_tracks_float32():
    cfg = small_config("lasad")
    m32 = perturbed_model(cfg)
    graphdef, state = nnx.split(m32)
    m16 = nnx.merge(nnx.split(LASADGen(small_config("lasad", dtype="bfloat16"),
                                       rngs=nnx.Rngs(0)))[0], state)
    l32, l16 = m32(LABELS, TOKENS), m16(LABELS, TOKENS)
    assert l16.dtype == jnp.float32  # logits are always float32 for the loss
    assert float(jnp.max(jnp.abs(l16 - l32)) / jnp.max(jnp.abs(l32))) < 0.05


@pytest.mark.parametrize("fields, match", [
    (dict(mixer="mamba"), r"model.mixer must be one of \('lasad'"),
    (dict(feature_map="tanh"), "model.feature_map"),
    (dict(dim=18, num_heads=4), "divisible by model.num_heads"),
    (dict(dim=12, num_heads=2), "head dim divisible by 4"),
    (dict(num_layers=0), "model.num_layers must be a positive int"),
    (dict(grid=(3,)), "model.grid"),
    (dict(gate_rank=-1), "model.gate_rank"),
])
def test_config_errors_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        small_config(**{"mixer": "lasad", **fields})


def test_from_config_presets_and_overrides():
    from ml_collections import config_dict

    cfg = config_dict.ConfigDict(dict(preset="B", num_layers=2, num_heads=None, dim=None))
    model_cfg = ModelConfig.from_config(cfg, vocab_size=10, grid=(4, 4), num_classes=5)
    assert (model_cfg.num_layers, model_cfg.num_heads, model_cfg.dim) == (2, 12, 768)
    with pytest.raises(ValueError, match="model.preset must be one of"):
        ModelConfig.from_config(config_dict.ConfigDict(dict(preset="M")), vocab_size=10,
                                grid=(4, 4), num_classes=5)
    with pytest.raises(ValueError, match="unknown model fields"):
        ModelConfig.from_config(config_dict.ConfigDict(dict(depth=3)), vocab_size=10,
                                grid=(4, 4), num_classes=5)


def test_too_many_tokens_rejected():
    model = LASADGen(small_config("lasad"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="N <= 11"):
        model(LABELS, jnp.zeros((2, 12), jnp.int32))


def test_softmax_baseline_uses_fused_attention_on_gpu_and_tpu(monkeypatch):
    """The softmax baseline runs cuDNN's flash attention where it can (an NVIDIA GPU, 16-bit
    inputs, head size <= 128 and a multiple of 8), splash attention on any TPU, and XLA's
    elsewhere (tests/models/test_tpu_attention.py checks the splash path's values)."""
    from lasad_jax.models import mixers

    bf16 = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
    assert mixers.attention_impl(bf16) is None  # CPU
    monkeypatch.setattr(mixers, "target_platform", lambda: "gpu")
    assert mixers.attention_impl(bf16) == "cudnn"
    assert mixers.attention_impl(bf16.astype(jnp.float32)) is None
    assert mixers.attention_impl(jnp.zeros((1, 8, 2, 160), jnp.bfloat16)) is None
    assert mixers.attention_impl(jnp.zeros((1, 8, 2, 36), jnp.bfloat16)) is None
    monkeypatch.setattr(mixers, "target_platform", lambda: "tpu")
    for q in (bf16, bf16.astype(jnp.float32), jnp.zeros((1, 8, 2, 36), jnp.bfloat16)):
        assert mixers.attention_impl(q) == "splash"


@pytest.mark.parametrize("mixer", ["lasad", "softmax"])
def test_remat_keeps_logits_and_gradients_and_checkpoints_every_block(mixer):
    """`remat` changes what the backward pass keeps, not what it computes: logits and
    every parameter gradient as without it (float32), and each block is one
    `jax.checkpoint` with the configured policy. What it saves in memory shows only in
    a compile for an accelerator (XLA's CPU pipeline keeps everything either way):
    benchmarks/gpu_aot.py --stages memory."""
    tokens = TOKENS[:, :-1]

    def loss_and_grads(remat):
        graphdef, params = nnx.split(perturbed_model(small_config(mixer, remat=remat)), nnx.Param)

        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p)(LABELS, tokens) ** 2)

        jaxpr = jax.make_jaxpr(loss)(params).jaxpr
        policies = [e.params["policy"] for e in jaxpr.eqns if e.primitive.name == "remat2"]
        return jax.jit(jax.value_and_grad(loss))(params), policies

    (want, want_grads), none = loss_and_grads("none")
    assert none == []
    for remat in ("dots", "full"):
        (got, grads), policies = loss_and_grads(remat)
        assert policies == [REMAT_POLICIES[remat]] * 2  # one per block
        np.testing.assert_allclose(got, want, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
