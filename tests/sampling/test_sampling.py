"""Guidance, filters and whole-batch generation against hand-computed and greedy cases."""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax.models import MIXERS, LASADGen
from flax import nnx

from lasad_jax.sampling import filter_logits, generate, guide, sample_logits
from lasad_jax.sampling.generate import cast_weights, start
from lasad_jax.sampling.images import make_grid
from lasad_jax.sampling.config import SampleConfig
from lasad_jax.sampling.sampler import (
    _checksums,
    class_list,
    sample_images,
    sample_to_files,
    weights_fingerprint,
)
from lasad_jax.tokenizers import IntensityTokenizer
from tests.models.helpers import perturbed_model, small_config

NEG = -np.inf


def test_guide_hand_case():
    cond = jnp.array([[1.0, 2.0, -1.0]])
    uncond = jnp.array([[0.0, 0.5, 1.0]])
    both = jnp.concatenate([cond, uncond])
    # l_u + s * (l_c - l_u)
    np.testing.assert_allclose(guide(both, 2.0), [[2.0, 3.5, -3.0]])
    np.testing.assert_allclose(guide(both, 1.0), cond)
    np.testing.assert_allclose(guide(both, 0.0), uncond)


def test_top_k_hand_cases():
    logits = jnp.array([[1.0, 3.0, 2.0, 0.0]])
    np.testing.assert_array_equal(filter_logits(logits, top_k=2), [[NEG, 3.0, 2.0, NEG]])
    np.testing.assert_array_equal(filter_logits(logits, top_k=1), [[NEG, 3.0, NEG, NEG]])
    np.testing.assert_array_equal(filter_logits(logits, top_k=0), logits)  # off
    np.testing.assert_array_equal(filter_logits(logits, top_k=9), logits)  # k >= vocab
    ties = jnp.array([[1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(filter_logits(ties, top_k=1), [[1.0, 1.0, NEG]])


def test_top_p_hand_cases():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.log(jnp.asarray(probs))[None]
    def keep(p):
        return np.isfinite(np.asarray(filter_logits(logits, top_p=p)))[0].tolist()
    # Sorted: 0.5, 0.3, 0.15, 0.05; mass before each: 0, 0.5, 0.8, 0.95.
    assert keep(0.5) == [False, True, False, False]
    assert keep(0.7) == [False, True, False, True]
    assert keep(0.81) == [False, True, True, True]
    assert keep(0.96) == [True, True, True, True]
    assert keep(0.01) == [False, True, False, False]  # the top token always survives
    assert keep(1.0) == [True, True, True, True]


def test_top_k_then_top_p_and_temperature():
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
    # top_k=3 renormalises to 4/9, 3/9, 2/9; mass before: 0, 0.444, 0.778.
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=3, top_p=0.7)))[0]
    assert kept.tolist() == [True, True, False, False]
    # Sampling frequencies follow softmax(logits / T) over the kept tokens.
    key = jax.random.key(0)
    draws = jax.vmap(lambda k: sample_logits(k, logits[0], temperature=0.5, top_k=2,
                                             top_p=1.0))(jax.random.split(key, 20000))
    p0 = 0.4 ** 2 / (0.4 ** 2 + 0.3 ** 2)  # temperature 0.5 squares the probabilities
    assert set(np.unique(np.asarray(draws))) == {0, 1}
    assert abs(float(jnp.mean(draws == 0)) - p0) < 0.015


def greedy_parallel(model, labels, cfg_scale: float) -> np.ndarray:
    """Greedy decoding the slow, independent way: for every token, the parallel forward
    over a whole sequence, taking the argmax of the (guided) logits at that token's slot.

    Tokens not drawn yet are 0 in that sequence. The forward is causal, so they cannot
    reach the slot read (were it not, the draws would differ from the sampler's), and one
    sequence length is one compiled program for every token."""
    cfg = model.cfg
    forward = nnx.jit(lambda model, labels, tokens: model(labels, tokens))
    tokens = jnp.zeros((labels.shape[0], cfg.num_tokens - 1), jnp.int32)
    null = jnp.full_like(labels, model.null_class)
    drawn = []
    for t in range(cfg.num_tokens):
        logits = forward(model, labels, tokens)[:, t]
        if cfg_scale != 1.0:
            uncond = forward(model, null, tokens)[:, t]
            logits = uncond + cfg_scale * (logits - uncond)
        drawn.append(jnp.argmax(logits, -1).astype(jnp.int32))
        if t < tokens.shape[1]:
            tokens = tokens.at[:, t].set(drawn[-1])
    return np.stack(drawn, 1).reshape(labels.shape[0], *cfg.grid)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_generate_top1_equals_greedy_parallel(mixer, cfg_scale):
    model = perturbed_model(small_config(mixer, grid=(3, 3)))
    labels = jnp.array([0, 1, 2])
    got = generate(model, labels, jax.random.key(0), cfg_scale=cfg_scale, top_k=1)
    assert got.shape == (3, 3, 3) and got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), greedy_parallel(model, labels, cfg_scale))


def test_cast_weights_forms_each_fused_decode_projection_once(monkeypatch):
    """Before the sampling loop every gated layer gets its fused `[dim, 4 dim]` decoding
    kernel (q, k, v and the low-rank gate's factors' product, bf16), and the decoding
    step reads it instead of forming it: with `decode_projection` broken afterwards, the
    step still gives the same logits."""
    from lasad_jax.models.mixers import DecodeKernel, LinearAttentionMixer

    model = perturbed_model(small_config("lasad", dtype="bfloat16"))
    graphdef, params = nnx.split(model)
    m = cast_weights(nnx.merge(graphdef, params))
    dim = m.cfg.dim
    for block in m.blocks:
        kernel = block.mixer.decode_kernel
        assert isinstance(kernel, DecodeKernel)
        assert kernel[...].shape == (dim, 4 * dim) and kernel[...].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(kernel[...], np.float32),
                                      np.asarray(block.mixer.decode_projection(), np.float32))
    cache, logits = start(m, jnp.array([0, 2]), cfg_scale=2.0)
    x = m.token_embed(jnp.array([3, 5, 3, 5]))
    want = m.decode_step(cache, x)[0]

    def broken(self):
        raise AssertionError("formed inside the step")

    monkeypatch.setattr(LinearAttentionMixer, "decode_projection", broken)
    np.testing.assert_array_equal(np.asarray(m.decode_step(cache, x)[0]), np.asarray(want))


@pytest.mark.parametrize("mixer", ["lasad", "softmax"])
def test_cast_weights_is_exact(mixer):
    """Casting the weights once before the loop gives the very logits of casting them at
    every use (bfloat16 model): projections and tables become bf16, and only they."""
    model = perturbed_model(small_config(mixer, dtype="bfloat16"))
    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, static_argnums=1)
    def first_logits(params, cast: bool):
        m = nnx.merge(graphdef, params)
        m = cast_weights(m) if cast else m
        cache, logits = start(m, jnp.array([0, 2]), cfg_scale=2.0)
        x = m.token_embed(jnp.array([3, 5, 3, 5]))
        return logits, m.decode_step(cache, x)[0], nnx.state(m, nnx.Param)

    plain, plain_next, _ = first_logits(params, False)
    cast, cast_next, state = first_logits(params, True)
    np.testing.assert_array_equal(np.asarray(cast), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(cast_next), np.asarray(plain_next))
    dtypes = {jax.tree_util.keystr(path): x.dtype
              for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert dtypes and all((d == jnp.bfloat16) == ("kernel" in p or "embedding" in p)
                          for p, d in dtypes.items()), dtypes


def test_generate_seeds_and_classes():
    model = perturbed_model(small_config("lasad"))
    labels = jnp.array([0, 1, 2, 0])
    a = generate(model, labels, jax.random.key(1))
    b = generate(model, labels, jax.random.key(1))
    c = generate(model, labels, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 11


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_k=-1), "top_k must be an int >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(cfg_scale=-1.0), "cfg_scale must be finite and >= 0"),
    (dict(cfg_scale=jnp.float32(2.0)), r"cfg_scale must be a Python or numpy number, not an "
                                       r"array; got Array\(2\., dtype=float32\) \(use float\(\)"),
    (dict(labels=jnp.zeros((0,), jnp.int32)), "labels must hold at least one class id"),
])
def test_generate_rejects_bad_settings(kwargs, match):
    model = perturbed_model(small_config("linear"))
    labels = kwargs.pop("labels", jnp.array([0]))
    with pytest.raises(ValueError, match=match):
        generate(model, labels, jax.random.key(0), **kwargs)


def test_make_grid_layout():
    images = np.stack([np.full((2, 3, 1), 10 * (i + 1), np.uint8) for i in range(3)])
    grid = make_grid(images, cols=2, scale=2, pad=1)
    assert grid.shape == (1 + 2 * (4 + 1), 1 + 2 * (6 + 1), 1)
    assert grid[1, 1, 0] == 10 and grid[4, 6, 0] == 10      # first tile, both corners
    assert grid[1, 8, 0] == 20                               # second tile, first row
    assert grid[6, 1, 0] == 30 and grid[6, 8, 0] == 255      # third tile; empty slot is white
    assert grid[0, 0, 0] == 255 and grid[5, 1, 0] == 255     # padding


def test_class_list():
    np.testing.assert_array_equal(class_list((), 2, 3), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(class_list([2, 0], 1, 3), [2, 0])
    with pytest.raises(ValueError, match=r"sample.classes must be class ids in \[0, 3\)"):
        class_list([3], 1, 3)
    with pytest.raises(ValueError, match="sample.per_class"):
        class_list((), 0, 3)
    assert math.isclose(len(class_list((), 50, 1000)), 50_000)


def test_another_dtype_is_another_draw_with_its_own_files(tmp_path):
    # dtype is not part of the checkpoint, yet it changes the tokens: the bfloat16 draw
    # of the same weights must get its own files, not the float32 ones back.
    tokenizer = IntensityTokenizer(levels=11, image_size=(3, 4), channels=1)
    m32 = perturbed_model(small_config("lasad"))
    m16 = LASADGen(small_config("lasad", dtype="bfloat16", decode_state_dtype="bfloat16"),
                   rngs=nnx.Rngs(0))
    nnx.update(m16, nnx.state(m32))
    cfg = SampleConfig(per_class=4, batch_size=4, cfg_scale=3.0)
    labels = class_list((), 4, 3)
    want32 = sample_images(m32, tokenizer, labels, cfg, progress=False)
    want16 = sample_images(m16, tokenizer, labels, cfg, progress=False)
    assert (want32 != want16).any()  # else this test could not tell the draws apart

    p32 = sample_to_files(m32, tokenizer, cfg, num_classes=3, out_dir=str(tmp_path), step=5)
    p16 = sample_to_files(m16, tokenizer, cfg, num_classes=3, out_dir=str(tmp_path), step=5)
    assert p32["npz"] != p16["npz"] and len(list(tmp_path.glob("*.npz"))) == 2
    for paths, want, dtype in ((p32, want32, "float32"), (p16, want16, "bfloat16")):
        with np.load(paths["npz"]) as f:
            np.testing.assert_array_equal(f["arr_0"][..., :1], want)
            settings = json.loads(str(f["settings"]))
        assert (settings["dtype"], settings["decode_state_dtype"]) == (dtype, dtype)
        assert settings["decode_impl"] == "auto"

    # The same draw again finds its own file and writes nothing.
    before = os.stat(p16["npz"]).st_mtime_ns
    assert sample_to_files(m16, tokenizer, cfg, num_classes=3, out_dir=str(tmp_path),
                           step=5) == p16
    assert os.stat(p16["npz"]).st_mtime_ns == before


def test_the_weights_checksum_matches_numpy_and_sees_every_element():
    """The position-weighted sum of bit patterns modulo 2**32, recomputed in numpy; it
    changes when one element changes or two are swapped, in float32 and bfloat16."""
    x = jax.random.normal(jax.random.key(0), (37, 5))
    bits = np.asarray(x).view(np.uint32).reshape(-1).astype(np.uint64)
    index = np.arange(bits.size, dtype=np.uint64)
    want = int(np.sum(bits * ((index * 0x9E3779B1 + 1) % 2**32) % 2**32) % 2**32)
    assert int(_checksums([x])[0]) == want
    for y in (x, x.astype(jnp.bfloat16)):
        base = int(_checksums([y])[0])
        assert int(_checksums([y.at[3, 1].add(1e-2)])[0]) != base
        assert int(_checksums([y.at[0, 0].set(y[0, 1]).at[0, 1].set(y[0, 0])])[0]) != base


def test_another_runs_weights_are_another_draw_with_its_own_files(tmp_path):
    """Same step and settings, other weights (another seed, or a new run in a workdir
    whose checkpoints were moved away): its own files, not the other run's back."""
    tokenizer = IntensityTokenizer(levels=11, image_size=(3, 4), channels=1)
    a = perturbed_model(small_config("lasad"))
    b = perturbed_model(small_config("lasad"))
    nnx.update(b, jax.tree.map(lambda p: p * 1.01, nnx.state(b, nnx.Param)))
    assert weights_fingerprint(a) == weights_fingerprint(perturbed_model(small_config("lasad")))
    assert weights_fingerprint(a) != weights_fingerprint(b)
    cfg = SampleConfig(per_class=1, batch_size=3)
    pa = sample_to_files(a, tokenizer, cfg, num_classes=3, out_dir=str(tmp_path), step=5)
    pb = sample_to_files(b, tokenizer, cfg, num_classes=3, out_dir=str(tmp_path), step=5)
    assert pa["npz"] != pb["npz"] and len(list(tmp_path.glob("*.npz"))) == 2
    with np.load(pb["npz"]) as f:
        assert json.loads(str(f["settings"]))["weights"] == weights_fingerprint(b)
