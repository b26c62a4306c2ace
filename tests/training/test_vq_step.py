"""The tokenizer's training step: the discriminator waits for `loss.disc_start`."""

from __future__ import annotations

import jax
import numpy as np
import optax

from lasad_jax.config import parse
from lasad_jax.training.optimizer import peak_learning_rate
from lasad_jax.training.vq.step import make_vq_state, make_vq_train_step
from tests.helpers import tiny_vq_config


def _is_schedule(x) -> bool:
    return isinstance(x, optax.ScaleByScheduleState)


def _held(tree) -> list:
    """The leaves the step holds before D starts: all but the schedule's count."""
    return [x for x in jax.tree.leaves(tree, is_leaf=_is_schedule) if not _is_schedule(x)]


def _schedule_counts(opt_state) -> list[int]:
    return [int(x.count) for x in jax.tree.leaves(opt_state, is_leaf=_is_schedule)
            if _is_schedule(x)]


def test_the_discriminator_is_held_until_it_starts():
    config = tiny_vq_config()
    config.loss.perceptual_weight = 0.0  # no LPIPS weights in the tests
    config.optimizer.weight_decay = 0.5  # large, so any decay of D would show
    run = parse(config, "train")
    assert run.loss.disc_start == 3 and run.optimizer.weight_decay == 0.5
    defs, state, tx, schedule, lpips = make_vq_state(
        run.vq, run.loss, run.optimizer, batch_size=run.batch_size, seed=run.seed,
        total_steps=4)
    step = make_vq_train_step(defs, tx, schedule, run.loss, lpips)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
    initial = jax.tree.map(np.asarray, (state.params, state.disc_params,
                                        state.disc_opt_state))
    for number in (1, 2, 3):  # update number 3 is D's first (1-based, as LlamaGen counts)
        state, metrics = step(state, {"image": images})
        disc = jax.tree.map(np.asarray, (state.disc_params, state.disc_opt_state))
        held = all(np.array_equal(a, b) for a, b in zip(_held(disc), _held(initial[1:])))
        assert held == (number < 3), number
        assert float(metrics["adv_weight"]) == (0.0 if number < 3 else run.loss.disc_weight)
        assert _schedule_counts(state.disc_opt_state) == [number]  # runs on meanwhile
    # The autoencoder trained all along.
    assert not np.array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(initial[0])[0])


def test_the_discriminator_starts_at_the_logged_learning_rate():
    """Adam's first update moves every parameter by the learning rate (the gradient's
    sign; no weight decay here): D's first one, at `disc_start`, moves by the rate
    logged for that step, not by a warm-up begun again from 0."""
    config = tiny_vq_config()
    config.loss.perceptual_weight = 0.0
    config.optimizer.update(weight_decay=0.0, warmup_steps=4)
    run = parse(config, "train")
    defs, state, tx, schedule, lpips = make_vq_state(
        run.vq, run.loss, run.optimizer, batch_size=run.batch_size, seed=run.seed,
        total_steps=8)
    step = make_vq_train_step(defs, tx, schedule, run.loss, lpips)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
    for _ in range(2):
        state, _ = step(state, {"image": images})
    before = jax.tree.map(np.asarray, state.disc_params)
    state, metrics = step(state, {"image": images})  # update 3: D's first
    moves = [np.abs(np.asarray(a) - b) for a, b in zip(jax.tree.leaves(state.disc_params),
                                                        jax.tree.leaves(before))]
    rate = float(metrics["learning_rate"])
    assert 0.0 < rate < peak_learning_rate(run.optimizer, run.batch_size)  # warming up
    np.testing.assert_allclose(max(float(m.max()) for m in moves), rate, rtol=1e-3)


def test_the_entropy_term_reaches_the_loss_and_the_weights():
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8)
    out = {}
    for weight in (0.0, 10.0):
        config = tiny_vq_config()
        config.loss.update(perceptual_weight=0.0, entropy_weight=weight)
        run = parse(config, "train")
        defs, state, tx, schedule, lpips = make_vq_state(
            run.vq, run.loss, run.optimizer, batch_size=run.batch_size, seed=run.seed,
            total_steps=4)
        state, metrics = make_vq_train_step(defs, tx, schedule, run.loss, lpips)(
            state, {"image": images})
        out[weight] = [float(metrics[k]) for k in ("loss", "entropy_loss", "grad_norm")]
    (loss0, entropy0, grad0), (loss10, entropy10, grad10) = out[0.0], out[10.0]
    assert entropy0 == 0.0 and entropy10 != 0.0  # computed only when weighted
    np.testing.assert_allclose(loss10 - loss0, 10.0 * entropy10, rtol=1e-4, atol=1e-6)
    assert abs(grad10 - grad0) > 1e-3 * grad0  # and it is differentiated
