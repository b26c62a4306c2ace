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
from lasad_jax.sampling.hlo_check import (called, check_loops, guarded_arrays, loop_problems,
                                          parse_hlo, sampler_problems)
from tests.helpers import DEFAULT_PIPELINE

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
    problems, text = sampler_problems(model, batch, cfg_scale=cfg_scale,
                                      compiler_options=DEFAULT_PIPELINE)
    assert problems == []
    assert " while(" in text
    if mixer in ("lasad", "softmax"):  # the check is not vacuous: it guards their arrays
        from lasad_jax.sampling.generate import cache_batch_axes

        rows = batch * (2 if cfg_scale != 1.0 else 1)
        cache = jax.eval_shape(lambda: model.init_cache(rows))
        column = rows * 2 * 16 * 16
        guarded = guarded_arrays(cache, cache_batch_axes(model.init_cache, rows), column)
        assert len(guarded) == {"lasad": 6, "softmax": 4}[mixer]


def _inside_loops(comps: dict) -> set[str]:
    """The computations a `while` body runs, directly or through calls and fusions."""
    todo = [body for instrs in comps.values() for i in instrs if i.op == "while"
            for body in called(i, "body")]
    seen: set[str] = set()
    while todo:
        comp = todo.pop()
        if comp not in seen:
            seen.add(comp)
            todo += [c for i in comps.get(comp, []) for key in ("calls", "to_apply", "body")
                     for c in called(i, key)]
    return seen


@pytest.mark.parametrize("gate_rank", [4, 0])
def test_fused_projection_kernel_is_built_before_the_loop(gate_rank):
    """A decoding token projects q, k, v and the gate's pre-activation in one matmul
    against their kernels side by side (`LinearAttentionMixer._project`; the low-rank
    gate's kernel there is its two factors' product): launches per layer fewer, only if
    XLA forms that kernel once before the token loop, not at every token. The
    concatenation of each layer's `[dim, 4 dim]` kernel is in the program, and outside
    every loop (with it, the product that feeds it)."""
    cfg = ModelConfig(mixer="lasad", **{**CFG, "gate_rank": gate_rank})
    model = LASADGen(cfg, rngs=nnx.Rngs(0))
    _, text = sampler_problems(model, 3, cfg_scale=2.0, compiler_options=DEFAULT_PIPELINE)
    comps = parse_hlo(text)
    fused = f"[{cfg.dim},{4 * cfg.dim}]"
    where = [name for name, instrs in comps.items() for i in instrs
             if i.op == "concatenate" and i.shape.split("{")[0].endswith(fused)]
    assert len(where) == cfg.num_layers, where
    assert not set(where) & _inside_loops(comps), where
    # The low-rank gate's factors' product, `[dim, dim]`, is formed before the loop too
    # (`cast_weights`): left to XLA's code motion, the GPU pipeline kept it inside.
    square = f"[{cfg.dim},{cfg.dim}]"
    products = [name for name, instrs in comps.items() for i in instrs
                if i.op == "dot" and i.shape.split("{")[0].endswith(square)]
    assert len(products) == (cfg.num_layers if gate_rank else 0), products
    assert not set(products) & _inside_loops(comps), products


def _compiled_scan(step, state):
    xs = jnp.ones((7, 3, 4), jnp.float32)

    def run(state, xs):
        return jax.lax.scan(lambda s, x: step(s, x), state, xs)

    text = jax.jit(run, donate_argnums=0).lower(state, xs).compile(DEFAULT_PIPELINE).as_text()
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


# A token loop as a TPU compile writes it (hand-written, after the v6e-8 sampler of
# benchmarks/tpu_aot.py): the memory-space assignment moves the ring of raw keys into VMEM
# (`S(1)`) and back out, reads part of it into v4's CMEM (`S(3)`), and, where marked, moves
# or copies more. The column states `[w, rows, D, D]` are 4 columns of 2 x 8 x 8 elements;
# the ring `[5, rows, D]` is smaller than one column.
_TPU_LOOP = """
%body (p: (s32[], f32[4,2,8,8], bf16[5,2,8])) -> (s32[], f32[4,2,8,8], bf16[5,2,8]) {
  %p = (s32[], f32[4,2,8,8]{3,2,1,0}, bf16[5,2,8]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %cols = f32[4,2,8,8]{3,2,1,0} get-tuple-element(%p), index=1
  %ring = bf16[5,2,8]{2,1,0} get-tuple-element(%p), index=2
  %in = (bf16[5,2,8]{2,1,0}, bf16[5,2,8]{2,1,0:S(1)}, u32[]{:S(2)}) copy-start(%ring)
  %on-chip = bf16[5,2,8]{2,1,0:S(1)} copy-done(%in)
  %out = (bf16[5,2,8]{2,1,0:S(1)}, bf16[5,2,8]{2,1,0}, u32[]{:S(2)}) copy-start(%on-chip)
  %back = bf16[5,2,8]{2,1,0} copy-done(%out)
  %part = ((bf16[5,2,8]{2,1,0}), bf16[2,2,8]{2,1,0:S(3)}, s32[]) slice-start(%back)
  %row = bf16[2,2,8]{2,1,0:S(3)} slice-done(%part)
  %EXTRA
  ROOT %t = (s32[], f32[4,2,8,8]{3,2,1,0}, bf16[5,2,8]{2,1,0}) tuple(%i, %cols, %back)
}

ENTRY %main (a: (s32[], f32[4,2,8,8], bf16[5,2,8])) -> (s32[], f32[4,2,8,8], bf16[5,2,8]) {
  %a = (s32[], f32[4,2,8,8]{3,2,1,0}, bf16[5,2,8]{2,1,0}) parameter(0)
  ROOT %w = (s32[], f32[4,2,8,8]{3,2,1,0}, bf16[5,2,8]{2,1,0}) while(%a), condition=%c, body=%body
}
"""
_TPU_GUARDED = {"cache.cols": (4, 2, 8, 8), "cache.keys": (5, 2, 8)}
_COLUMN = 2 * 8 * 8


def test_tpu_moves_of_arrays_up_to_a_column_are_listed_not_failed():
    """A ring moved into VMEM and back is two moves of its 160 bytes, no problem; its
    partial read into CMEM and the `-done` halves are neither; without `movable` (the
    GPU and CPU rule) each whole-ring transfer is a problem, counted once."""
    text = _TPU_LOOP.replace("%EXTRA", "")
    assert loop_problems(text, _TPU_GUARDED, movable=_COLUMN) == []
    moves = check_loops(text, _TPU_GUARDED, movable=_COLUMN).moves
    assert [(m.name, m.shape, m.nbytes, m.into_chip) for m in moves] == [
        ("cache.keys", "bf16[5,2,8]", 160, True), ("cache.keys", "bf16[5,2,8]", 160, False)]
    strict = loop_problems(text, _TPU_GUARDED)
    assert len(strict) == 2 and all("%in " in p or "%out " in p for p in strict), strict


@pytest.mark.parametrize("extra,what", [
    # the column states moved whole into VMEM: larger than one column
    ("%cols-in = (f32[4,2,8,8]{3,2,1,0}, f32[4,2,8,8]{3,2,1,0:S(1)}, u32[]) copy-start(%cols)",
     "%cols-in copies a whole cache.cols"),
    # a copy of the ring in HBM: not a move between memories
    ("%dup = bf16[5,2,8]{2,1,0} copy(%ring)", "%dup copies a whole cache.keys"),
    # the ring rewritten by a fusion
    ("%f = bf16[5,2,8]{2,1,0} fusion(%ring), kind=kLoop, calls=%nothing",
     "%f fusion rewrites a whole cache.keys"),
])
def test_tpu_check_still_fails_on_real_copies_and_large_moves(extra, what):
    problems = loop_problems(_TPU_LOOP.replace("%EXTRA", extra), _TPU_GUARDED, movable=_COLUMN)
    assert len(problems) == 1 and what in problems[0], problems
