"""The tokenizer's training step: the discriminator waits for `loss.disc_start`."""

from __future__ import annotations

import jax
import numpy as np

from lasad_jax.config import parse
from lasad_jax.training.vq.step import make_vq_state, make_vq_train_step
from tests.helpers import tiny_vq_config


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
        held = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(disc),
                                                        jax.tree.leaves(initial[1:])))
        assert held == (number < 3), number
        assert float(metrics["adv_weight"]) == (0.0 if number < 3 else run.loss.disc_weight)
    # The autoencoder trained all along.
    assert not np.array_equal(jax.tree.leaves(state.params)[0], jax.tree.leaves(initial[0])[0])
