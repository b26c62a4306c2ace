"""Small LASADGen models for tests across packages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lasad_jax.models import LASADGen, ModelConfig


# A batch for the small models: tokens of an 11-token sequence, one real class and the
# null class (3, for `small_config`'s 3 classes).
TOKENS = jax.random.randint(jax.random.key(7), (2, 11), 0, 11)
LABELS = jnp.array([0, 3])


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


def decode_logits(model: LASADGen, labels, tokens) -> jax.Array:
    """Every logit of `model(labels, tokens)`, one jitted decoding step at a time."""
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(params, cache, x):
        return nnx.merge(graphdef, params).decode_step(cache, x)

    logits, cache = step(params, model.init_cache(labels.shape[0]), model.class_embed(labels))
    out = [logits]
    for i in range(tokens.shape[1]):
        logits, cache = step(params, cache, model.token_embed(tokens[:, i]))
        out.append(logits)
    return jnp.stack(out, axis=1)
