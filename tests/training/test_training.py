"""Optimizer, train step, the generator's state, and checkpoints."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lasad_jax.config import parse
from lasad_jax.data import build_source
from lasad_jax.tokenizers import build_tokenizer
from lasad_jax.training import checkpoint as ckpt_lib
from lasad_jax.training.config import OptimizerConfig
from lasad_jax.training.generator import make_state as make_generator_state
from lasad_jax.training.optimizer import make_schedule
from lasad_jax.training.step import drop_classes, make_eval_step, make_train_step
from tests.helpers import tiny_demo_config


def make_state(config, total_steps):
    run = parse(config, "train")
    return make_generator_state(run.model, run.optimizer, batch_size=run.batch_size,
                                seed=run.seed, total_steps=total_steps)


def step_fn(config, state_tuple):
    graphdef, _, tx, schedule = state_tuple
    return make_train_step(graphdef, tx, schedule, class_dropout=config.train.class_dropout,
                           null_class=config.data.num_classes, ema_decay=config.train.ema_decay)


def fixed_batch(config, n=16):
    run = parse(config, "train")
    return build_source(run.data, "train", build_tokenizer(run.tokenizer)).rows(0, n)


def test_schedule_warmup_then_cosine():
    cfg = OptimizerConfig(lr=2.56e-2, schedule="cosine", warmup_steps=10, end_lr_fraction=0.1)
    sched = make_schedule(cfg, batch_size=10, total_steps=110)  # peak = 2.56e-2 * 10/256
    peak = 1e-3
    np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0, peak / 2, peak], rtol=1e-6)
    np.testing.assert_allclose(sched(60), peak * (0.1 + 0.9 * 0.5), rtol=1e-5)  # half-way
    np.testing.assert_allclose(sched(110), peak * 0.1, rtol=1e-5)
    with pytest.raises(ValueError, match="optimizer.schedule must be one of"):
        OptimizerConfig(lr=1.0, schedule="step")
    with pytest.raises(ValueError, match=r"optimizer.warmup_steps must be in \[0, 5\]"):
        make_schedule(OptimizerConfig(warmup_steps=6), batch_size=1, total_steps=5)


@pytest.mark.slow
def test_weight_decay_only_on_matrices():
    """With zero gradients AdamW only decays: >= 2-D parameters shrink by lr * wd, norm
    scales and decay logits (1-D) stay put."""
    config = tiny_demo_config()
    config.optimizer.update(warmup_steps=0, schedule="constant", end_lr_fraction=1.0, lr=0.256,
                            weight_decay=0.5)
    graphdef, state, tx, _ = make_state(config, total_steps=10)  # lr = 0.256 * 16/256
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = tx.update(zeros, state.opt_state, state.params)
    new = optax.apply_updates(state.params, updates)
    for p, q in zip(jax.tree.leaves(state.params), jax.tree.leaves(new)):
        factor = 1 - 0.016 * 0.5 if p.ndim >= 2 else 1.0
        np.testing.assert_allclose(q, p * factor, rtol=1e-6, atol=1e-9)


def test_class_dropout_rate():
    labels = jnp.zeros((20000,), jnp.int32)
    dropped = drop_classes(jax.random.key(0), labels, 0.1, null_class=10)
    assert set(np.unique(np.asarray(dropped))) == {0, 10}
    assert abs(float(jnp.mean(dropped == 10)) - 0.1) < 0.01


@pytest.mark.slow
def test_overfits_a_fixed_batch():
    config = tiny_demo_config()
    config.model.update(num_layers=2, dim=64, num_heads=4)
    config.train.class_dropout = 0.0
    config.num_steps = 150
    config.optimizer.update(lr=0.048, warmup_steps=10, schedule="constant",  # 3e-3 at batch 16
                            end_lr_fraction=1.0)
    parts = make_state(config, total_steps=150)
    state, step = parts[1], step_fn(config, parts)
    batch = fixed_batch(config)
    first = None
    for _ in range(150):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    final = float(metrics["loss"])
    assert math.isclose(first, math.log(17), rel_tol=1e-4)  # zero head: uniform over 17
    assert final < 0.2, final  # measured 0.06 nats/token (log 17 = 2.83 at the start)


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


@pytest.mark.parametrize("nonfinite, accum", [("halt", 1), ("skip", 1), ("skip", 2)])
def test_state_finite_says_whether_the_new_state_is_finite(nonfinite, accum):
    """`state_finite`, read off two norms, against a check of every array of the new
    state: after a good step, and after one whose first example has tokens out of the
    vocabulary (the embedding lookup gives NaN, so loss and gradients are NaN; with
    gradient accumulation, those of one micro-batch)."""
    config = tiny_demo_config()
    config.model.update(num_layers=1, dim=32, num_heads=2)
    parts = make_state(config, total_steps=4)
    graphdef, state, tx, schedule = parts
    step = make_train_step(graphdef, tx, schedule, class_dropout=0.0,
                           null_class=config.data.num_classes, ema_decay=0.9,
                           nonfinite=nonfinite, grad_accum_steps=accum)
    batch = fixed_batch(config, n=4)
    state, metrics = step(state, batch)
    assert bool(metrics["state_finite"]) and _finite(state)
    tokens = np.array(batch["tokens"])
    tokens[0] = 17
    poisoned = dict(batch, tokens=tokens)
    new, metrics = step(state, poisoned)
    assert not np.isfinite(float(metrics["loss"]))
    # halt: the update is applied and ruins the state; skip: the old state is kept.
    assert bool(metrics["state_finite"]) == (nonfinite == "skip") == _finite(new)


def test_gradient_accumulation_gives_the_update_of_one_batch():
    """Two steps with the batch in 2 or 4 micro-batches against the same steps without
    accumulation (float32, half the labels dropped to the null class: the draws must be
    the whole batch's): the same losses, gradient norms and parameters up to rounding,
    while XLA's temporaries (the activations alive at once) shrink with the micro-batch."""
    config = tiny_demo_config()
    config.optimizer.update(warmup_steps=0)
    graphdef, state, tx, schedule = make_state(config, total_steps=6)
    batch = fixed_batch(config, n=16)
    runs = {}
    for accum in (1, 2, 4):
        step = make_train_step(graphdef, tx, schedule, class_dropout=0.5,
                               null_class=config.data.num_classes, ema_decay=0.9,
                               grad_accum_steps=accum)
        new = jax.tree.map(jnp.copy, state)
        temp = step.lower(new, batch).compile().memory_analysis().temp_size_in_bytes
        metrics = []
        for _ in range(2):
            new, m = step(new, batch)
            metrics.append([float(m["loss"]), float(m["grad_norm"])])
        runs[accum] = dict(metrics=metrics, params=jax.tree.leaves(new.params), temp=temp)
    one = runs[1]
    assert one["metrics"][0][0] != one["metrics"][1][0]  # the first update changed the model
    for accum in (2, 4):
        np.testing.assert_allclose(runs[accum]["metrics"], one["metrics"], rtol=1e-6)
        for got, want in zip(runs[accum]["params"], one["params"]):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # 12.6 MB, 6.5 MB, 3.4 MB on a 2-core CPU (JAX 0.10.2).
    assert runs[2]["temp"] < 0.6 * one["temp"] and runs[4]["temp"] < 0.6 * runs[2]["temp"]


@pytest.mark.slow
def test_save_restore_identical_params_and_next_loss(tmp_path):
    config = tiny_demo_config()
    parts = make_state(config, total_steps=10)
    state, step = parts[1], step_fn(config, parts)
    batch = fixed_batch(config)
    for _ in range(3):
        state, _ = step(state, batch)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), keep=2, save_every=1)
    skeleton = ckpt_lib.abstract(state)
    saved = jax.tree.map(np.asarray, state)  # the step below donates `state`
    ckpt.save(3, state, force=True)
    ckpt.wait()
    restored = ckpt.restore(skeleton)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, saved, jax.tree.map(np.asarray, restored))
    _, m_orig = step(jax.tree.map(jnp.asarray, saved), batch)
    _, m_rest = step(restored, batch)
    assert float(m_orig["loss"]) == float(m_rest["loss"])


def test_eval_step_ignores_padding():
    config = tiny_demo_config()
    graphdef, state, _, _ = make_state(config, total_steps=10)
    eval_step = make_eval_step(graphdef)
    batch = fixed_batch(config, 4)
    batch["mask"] = np.array([1, 1, 0, 0], np.float32)
    total, count = eval_step(state.params, batch)
    assert float(count) == 2.0
    np.testing.assert_allclose(float(total), 2 * math.log(17), rtol=1e-5)  # uniform start


@pytest.mark.slow
def test_bfloat16_training_step_tracks_float32():
    """bf16 compute (float32 parameters and optimizer) gives nearly the float32 loss."""
    batch = fixed_batch(tiny_demo_config())
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_demo_config()
        config.model.dtype = dtype
        config.optimizer.update(lr=0.048, warmup_steps=0)  # 3e-3 at batch 16
        parts = make_state(config, total_steps=10)
        state, step = parts[1], step_fn(config, parts)
        for _ in range(6):
            state, metrics = step(state, batch)
        assert jax.tree.leaves(state.params)[0].dtype == jnp.float32
        losses[dtype] = float(metrics["loss"])
    assert losses["float32"] < math.log(17) - 0.1  # it learned something in 6 steps
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.02 * losses["float32"]


def test_a_decaying_schedule_must_decay():
    """cosine or linear with end_lr_fraction=1 (the default) would hold the peak; constant
    with another end_lr_fraction would ignore it."""
    with pytest.raises(ValueError, match="end_lr_fraction must be below 1 for schedule='cosine'"):
        OptimizerConfig(schedule="cosine")
    OptimizerConfig(schedule="cosine", end_lr_fraction=0.0)
    OptimizerConfig(schedule="constant")
    # A constant schedule never reads it: a decay asked for with it is refused, not dropped.
    with pytest.raises(ValueError, match=r"end_lr_fraction \(0.1\) has no effect with "
                                         r"schedule='constant'; set schedule='cosine'"):
        OptimizerConfig(schedule="constant", end_lr_fraction=0.1)
