"""LASADGen: a Llama-style decoder over [class slot, image tokens] (docs/model.md).

Sequence layout: slot 0 holds the class embedding (row `num_classes` is the null class
used for classifier-free guidance); slots 1.. hold the image tokens in raster order.
The logits at slot `i` predict image token `i`, so a training input of `L - 1` tokens
yields the `L` logits of a whole image.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lasad_jax.models.config import ModelConfig
from lasad_jax.models.layers import INIT, RMSNorm, SwiGLU, linear
from lasad_jax.models.mixers import make_mixer
from lasad_jax.parallel.rules import constrain

Cache = dict[str, Any]
RESIDUAL = ("batch", None, None)
# `ModelConfig.remat` -> what `jax.checkpoint` saves of a block ("none": no checkpoint).
REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


class Block(nnx.Module):
    """Pre-norm residual block: mixer, then SwiGLU."""

    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        self.mixer_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mixer = make_mixer(cfg, dtype, rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden, dtype, rngs)

    def __call__(self, x: jax.Array, slots: jax.Array) -> jax.Array:
        x = x + self.mixer(self.mixer_norm(x), slots)
        return x + self.mlp(self.mlp_norm(x))

    def decode(self, cache: Any, x: jax.Array, slot: jax.Array) -> tuple[jax.Array, Any]:
        h, cache = self.mixer.decode(cache, self.mixer_norm(x), slot)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache


class LASADGen(nnx.Module):
    """Class-conditional autoregressive generator over a `cfg.grid` of tokens."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        self.dtype = dtype
        emb = dict(dtype=dtype, param_dtype=jnp.float32, embedding_init=INIT, rngs=rngs)
        self.class_embed = nnx.Embed(cfg.num_classes + 1, cfg.dim, **emb,
                                     embedding_metadata={"logical_axes": ("classes", "embed")})
        self.token_embed = nnx.Embed(cfg.vocab_size, cfg.dim, **emb,
                                     embedding_metadata={"logical_axes": ("vocab", "embed")})
        self.blocks = nnx.List([Block(cfg, dtype, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Zero head: every token starts equally likely, loss = log(vocab).
        self.head = linear(cfg.dim, cfg.vocab_size, dtype, rngs, axes=("embed", "vocab"),
                           init=nnx.initializers.zeros)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _lookup(self, embed: nnx.Embed, ids: jax.Array) -> jax.Array:
        """`embed(ids)` with the table gathered over the FSDP axis first. Looking rows up
        in a table split along its width would leave the activations (and, backward, the
        table's gradient) split by width rather than by batch, a layout change XLA can
        only make by replicating them; gathering the weight is the FSDP pattern."""
        rows = embed.embedding.get_metadata()["logical_axes"][0]
        table = constrain(embed.embedding[...], (rows, None))
        return jnp.take(table.astype(self.dtype), ids, axis=0)

    def _logits(self, x: jax.Array) -> jax.Array:
        return self.head(self.final_norm(x)).astype(jnp.float32)

    def __call__(self, labels: jax.Array, tokens: jax.Array) -> jax.Array:
        """`labels: [B]` (the null class allowed), `tokens: [B, N]` with `N < grid size`
        -> logits `[B, N + 1, vocab]` in float32."""
        cfg = self.cfg
        if tokens.ndim != 2 or tokens.shape[1] > cfg.num_tokens - 1:
            raise ValueError(f"tokens must be [batch, N] with N <= {cfg.num_tokens - 1} "
                             f"(grid {cfg.grid}), got shape {tuple(tokens.shape)}")
        x = jnp.concatenate([self._lookup(self.class_embed, labels)[:, None],
                             self._lookup(self.token_embed, tokens)], 1)
        slots = jnp.arange(x.shape[1])

        def apply(block: Block, x: jax.Array) -> jax.Array:
            return block(x, slots)

        if cfg.remat != "none":
            # Why "dots" saves matmuls without batch dimensions: those are the weight
            # projections, the costly part to recompute; the mixer's own products (batched
            # over heads, or inside the Pallas kernels) and everything elementwise are
            # recomputed from them.
            apply = nnx.remat(apply, policy=REMAT_POLICIES[cfg.remat])
        for block in self.blocks:
            # Keep the residual stream split by batch only (weights are gathered to it,
            # never the other way round); a no-op without a mesh.
            x = constrain(apply(block, constrain(x, RESIDUAL)), RESIDUAL)
        return constrain(self._logits(x), ("batch", None, "vocab"))

    # -- decoding, one slot at a time

    def init_cache(self, batch: int) -> Cache:
        return {"slot": jnp.zeros((), jnp.int32),
                "layers": [block.mixer.init_cache(batch) for block in self.blocks]}

    def decode_step(self, cache: Cache, x: jax.Array) -> tuple[jax.Array, Cache]:
        """Feeds one embedded slot `x: [B, dim]` (from `class_embed` or `token_embed`) and
        returns the logits for the next image token, `[B, vocab]` float32."""
        slot = cache["slot"]
        layers = []
        for block, layer_cache in zip(self.blocks, cache["layers"]):
            x, layer_cache = block.decode(layer_cache, x, slot)
            layers.append(layer_cache)
        return self._logits(x), {"slot": slot + 1, "layers": layers}


def param_count(cfg: ModelConfig) -> int:
    """Parameters of a model, counted on an abstract init (no memory is allocated)."""
    model = nnx.eval_shape(lambda: LASADGen(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
