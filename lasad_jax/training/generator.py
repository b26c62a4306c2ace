"""The generator's pieces that the training, sampling and evaluation jobs compose: its
train state (built sharded, or only its shape for a restore) and the validation pass.

The pure steps they run live in `lasad_jax.training.step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from lasad_jax.data import eval_batches
from lasad_jax.models import LASADGen, ModelConfig
from lasad_jax.parallel.batch import global_from_full
from lasad_jax.parallel.state import abstract_with_shardings
from lasad_jax.training.config import OptimizerConfig
from lasad_jax.training.optimizer import make_optimizer, make_schedule
from lasad_jax.training.step import create_train_state


# The model fields that fix its parameters and what it computes: a checkpoint is refused
# by a run that differs in any of them. The others (`dtype`, `impl`, `chunk_size`, ...)
# only choose how the same function is computed, and may change between runs.
ARCHITECTURE = ("vocab_size", "num_classes", "grid", "num_layers", "num_heads", "dim", "mixer",
                "feature_map", "gate", "gate_rank", "pos_encoding", "rope_base", "norm_eps")


def generator_identity(model: ModelConfig, tokenizer: str | None,
                       data_order: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What a generator checkpoint records about the run that wrote it: the model's
    architecture, the fingerprint of the tokenizer whose codes it learned (None when
    unknown, e.g. codes extracted before fingerprints were recorded) and, for a training
    run, its data order (`checkpoint.data_order`)."""
    identity = {"task": "generator",
                "model": {name: getattr(model, name) for name in ARCHITECTURE},
                "tokenizer": tokenizer}
    if data_order is not None:
        identity["data_order"] = dict(data_order)
    return identity


def state_factory(model: ModelConfig, optimizer: OptimizerConfig, *, batch_size: int,
                  seed: int, total_steps: int) -> tuple[Any, Callable[[], Any], Any, Any]:
    """(graphdef, `init()` -> initial TrainState, optimizer, schedule) for a run of
    `total_steps`. `init` builds the model itself, so it can run under `jax.jit` with
    sharded outputs (`lasad_jax.parallel.sharded_init`) or `jax.eval_shape`; the graph
    definition comes from an abstract model and costs no memory."""
    schedule = make_schedule(optimizer, batch_size=batch_size, total_steps=total_steps)
    tx = make_optimizer(optimizer, schedule)
    graphdef = nnx.split(nnx.eval_shape(lambda: LASADGen(model, rngs=nnx.Rngs(seed))),
                         nnx.Param)[0]

    def init() -> Any:
        return create_train_state(LASADGen(model, rngs=nnx.Rngs(seed)), tx, seed)[1]

    return graphdef, init, tx, schedule


def make_state(model: ModelConfig, optimizer: OptimizerConfig, *, batch_size: int, seed: int,
               total_steps: int) -> tuple[Any, Any, Any, Any]:
    """(graphdef, initial TrainState, optimizer, schedule) on the default device: for
    tests and notebooks; training builds the state sharded instead."""
    graphdef, init, tx, schedule = state_factory(model, optimizer, batch_size=batch_size,
                                                 seed=seed, total_steps=total_steps)
    return graphdef, init(), tx, schedule


def params_target(model: ModelConfig, mesh: Mesh) -> tuple[Any, Any]:
    """(graphdef, abstract parameters carrying `mesh`'s shardings): what a checkpoint's
    weights restore into, with no optimizer and no memory spent on a fresh model."""
    def params() -> Any:
        return nnx.split(LASADGen(model, rngs=nnx.Rngs(0)), nnx.Param)[1]

    graphdef = nnx.split(nnx.eval_shape(lambda: LASADGen(model, rngs=nnx.Rngs(0))),
                         nnx.Param)[0]
    return graphdef, abstract_with_shardings(params, mesh)[0]


def bits_per_token(eval_step: Callable, params: Any, source: Any, batch_size: int,
                   mesh: Mesh) -> float:
    """Validation loss in bits per token over the whole split. Every process walks the
    same batches; each device evaluates its rows of them."""
    total, count = 0.0, 0.0
    for batch in eval_batches(source, batch_size=batch_size):
        s, n = eval_step(params, global_from_full(batch, mesh))
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0) / math.log(2.0)
