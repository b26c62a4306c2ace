"""Small LASADGen models for tests across packages."""

from __future__ import annotations

import jax
from flax import nnx

from lasad_jax.models import LASADGen, ModelConfig


def small_config(mixer: str, **overrides) -> ModelConfig:
    fields = dict(vocab_size=11, num_classes=3, grid=(3, 4), num_layers=2, num_heads=2, dim=16,
                  mixer=mixer, gate_rank=4)
    fields.update(overrides)
    return ModelConfig(**fields)


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> LASADGen:
    """A model whose weights are far from the small init (and whose head is not zero),
    so every mixer changes the logits visibly and a wrong decode path cannot hide."""
    graphdef, state = nnx.split(LASADGen(cfg, rngs=nnx.Rngs(seed)))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) if x.ndim >= 2 else x
              for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
