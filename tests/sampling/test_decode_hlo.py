"""The compiled sampler updates its decoding cache in place: no conditional carries a cache
array and nothing in the loop body copies or rebuilds one (lasad_jax.sampling.hlo_check).

On 2026-12-04 this failed on the previous `ops/decode.py` (a `lax.cond` row start over a
`[B, H, w, 2, Dk, Dv]` grid: the conditional and a concatenate rebuilding the grid at
every token) and on the previous softmax cache (`[batch, slot, heads, D]`: two transposes
of each cache array per token), and on a `[batch, heads, slot, D]` cache at batch 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lasad_jax.models import MIXERS, LASADGen, ModelConfig
from lasad_jax.sampling.hlo_check import guarded_arrays, loop_problems, sampler_problems

# w = 8 columns and head dim 16: every multi-slot array of the lasad state (9 column
# states, 16 ring slots) and the softmax KV cache (41 slots) is larger than one 16 x 16
# column, so all of them are guarded; the linear variants' states are one column each.
CFG = dict(vocab_size=11, num_classes=3, grid=(5, 8), num_layers=2, num_heads=2, dim=32,
           gate_rank=4)


@pytest.mark.parametrize("mixer,batch,cfg_scale",
                         [(m, 3, 2.0) for m in MIXERS] + [("lasad", 1, 1.0), ("softmax", 1, 1.0)])
def test_sampler_loop_updates_the_cache_in_place(mixer, batch, cfg_scale):
    """Guided batches, and one image without guidance: a batch axis of size one changed
    XLA's layout decisions (a [B, H, slot, D] KV cache was copied there, not at B >= 2)."""
    model = LASADGen(ModelConfig(mixer=mixer, **CFG), rngs=nnx.Rngs(0))
    problems, text = sampler_problems(model, batch, cfg_scale=cfg_scale)
    assert problems == []
    assert " while(" in text
    if mixer in ("lasad", "softmax"):  # the check is not vacuous: it guards their arrays
        from lasad_jax.sampling.generate import cache_batch_axes

        rows = batch * (2 if cfg_scale != 1.0 else 1)
        cache = jax.eval_shape(lambda: model.init_cache(rows))
        column = rows * 2 * 16 * 16
        guarded = guarded_arrays(cache, cache_batch_axes(model.init_cache, rows), column)
        assert len(guarded) == {"lasad": 6, "softmax": 4}[mixer]


def _compiled_scan(step, state):
    xs = jnp.ones((7, 3, 4), jnp.float32)

    def run(state, xs):
        return jax.lax.scan(lambda s, x: step(s, x), state, xs)

    text = jax.jit(run, donate_argnums=0).lower(state, xs).compile().as_text()
    return text, {"cache.grid": state[1].shape}


def test_checker_flags_a_conditional_and_a_read_after_the_update():
    state = (jnp.zeros((), jnp.int32), jnp.zeros((5, 3, 4), jnp.float32))

    def with_cond(s, x):  # a row start through lax.cond, as the old decoder had
        pos, grid = s
        grid = jax.lax.cond(pos % 5 == 0, lambda g: 0.5 * g, lambda g: g, grid)
        grid = jax.lax.dynamic_update_index_in_dim(grid, x, pos % 5, 0)
        return (pos + 1, grid), grid[0]

    text, guarded = _compiled_scan(with_cond, state)
    problems = loop_problems(text, guarded)
    assert any("conditional" in p and "cache.grid" in p for p in problems), problems

    def read_old_after_update(s, x):  # the old buffer is still needed after the update
        pos, grid = s
        new = jax.lax.dynamic_update_index_in_dim(grid, x, pos % 5, 0)
        return (pos + 1, new), jnp.sum(grid * new, axis=0)

    text, guarded = _compiled_scan(read_old_after_update, state)
    problems = loop_problems(text, guarded)
    assert problems and all("cache.grid" in p for p in problems), problems

    def in_place(s, x):
        pos, grid = s
        new = jax.lax.dynamic_update_index_in_dim(grid, x, pos % 5, 0)
        return (pos + 1, new), new[pos % 5] + new[0]

    assert loop_problems(*_compiled_scan(in_place, state)) == []
