"""Whole-batch generation in one jitted program.

`generate` runs `jax.lax.scan` over the token positions, carrying the model's decoding
cache: the recurrent states of the linear mixers (fixed size; docs/decoding.md) or the KV
cache of the softmax mixer. Classifier-free guidance runs the conditional and the
null-class rows as one doubled batch and feeds the sampled token to both halves.

The cache is carried through the scan and updated in place; nothing in the loop may copy
it (`lasad_jax.sampling.hlo_check` reads the compiled program to make sure).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lasad_jax.models.mixers import DecodeKernel, LinearAttentionMixer
from lasad_jax.parallel.batch import batch_sharding, local_batch_size
from lasad_jax.parallel.rules import batch_axes, constrain
from lasad_jax.sampling.checks import check_generate_args


def guide(logits: jax.Array, scale: float) -> jax.Array:
    """`[2B, V]` logits of `[cond; uncond]` rows -> `l_u + scale * (l_c - l_u)`, `[B, V]`."""
    cond, uncond = jnp.split(logits, 2, axis=0)
    return uncond + scale * (cond - uncond)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets to -inf every logit outside the top-k (k = 0: off) and outside the nucleus
    (the smallest set of most likely tokens whose probability reaches `top_p`; 1.0: off).

    Ties at the cut are kept, so a filter never removes one of two equal logits and
    keeps the other. The most likely token always survives.
    """
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p
        cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return logits


def sample_logits(key: jax.Array, logits: jax.Array, *, temperature: float, top_k: int,
                  top_p: float) -> jax.Array:
    """Temperature first, then the filters, then one categorical draw per row."""
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def cache_batch_axes(init_cache, batch: int):
    """The batch axis of every array of `init_cache(batch)` (-1 for scalars;
    `parallel.rules.batch_axes`). Cache arrays that are updated one slot at a time lead
    with that slot axis, not the batch."""
    return batch_axes(init_cache, batch)


def _split_batch(x: jax.Array, axis: int) -> jax.Array:
    """Keeps a decoding-cache entry split by batch over the mesh (a no-op without one);
    scalars (the slot counters) are replicated."""
    if axis < 0:
        return x
    return constrain(x, tuple("batch" if i == axis else None for i in range(x.ndim)))


def cast_weights(model: nnx.Module) -> nnx.Module:
    """Casts every projection kernel and embedding table of `model` to its layer's compute
    dtype, in place, and returns the model; call it on the traced copy a sampling program
    merges, before the loop.

    Why: layers keep float32 parameters and cast them at each use. Inside the sampling
    loop that cast happens at every token: compiled for an H200, the bf16 LASADGen-B
    program converted each projection in a kernel of its own (reading 4 bytes and writing
    2 per parameter, then the product read the 2 again), and the softmax twin read every
    float32 weight inside its matmuls (benchmarks/gpu_aot.py). Cast once, a token reads 2
    bytes per parameter. The results do not change: each layer casts to the same dtype
    anyway. Float32 parameters used in float32 (norm scales, decays) are left alone.
    It also forms each gated linear-attention layer's fused decoding projection once
    (`LinearAttentionMixer.decode_projection`), from the cast weights.
    """
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear) and module.dtype is not None:
            module.kernel.set_value(module.kernel[...].astype(module.dtype))
        elif isinstance(module, nnx.Embed) and module.dtype is not None:
            module.embedding.set_value(module.embedding[...].astype(module.dtype))
    # Each gated linear-attention layer's fused decoding projection, formed here once: a
    # token's q, k, v and gate then take one matmul and no other kernel (`_project`).
    for _, module in nnx.iter_modules(model):
        kernel = (module.decode_projection() if isinstance(module, LinearAttentionMixer)
                  else None)
        if kernel is not None:  # None: a layer without a gate, whose projection is q, k, v
            module.decode_kernel = DecodeKernel(kernel)
    return model


def start(model: nnx.Module, labels: jax.Array, *, cfg_scale: float):
    """The empty cache fed the class slot: `(cache, logits)` for the first image token.
    With guidance the null-class rows follow the conditional ones (a doubled batch)."""
    if cfg_scale != 1.0:
        labels = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)])
    logits, cache = model.decode_step(model.init_cache(labels.shape[0]),
                                      model.class_embed(labels))
    return cache, logits


def decode_loop(model: nnx.Module, cache, logits: jax.Array, keys: jax.Array, *,
                cfg_scale: float, temperature: float, top_k: int, top_p: float):
    """The sampler's loop: for each key, draws the next token from `logits` (guided) and
    feeds it. One `lax.scan` carrying the cache; returns `(cache, logits, tokens [n, B])`.
    `generate` runs it over a whole image, `benchmarks/sampling.py` over parts of one."""
    guided = cfg_scale != 1.0
    draw = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    axes = cache_batch_axes(model.init_cache, logits.shape[0])

    def body(carry, step_key):
        cache, logits = carry
        cache = jax.tree.map(_split_batch, cache, axes)
        token = draw(step_key, guide(logits, cfg_scale) if guided else logits)
        x = model.token_embed(jnp.concatenate([token, token]) if guided else token)
        logits, cache = model.decode_step(cache, x)
        return (cache, logits), token

    (cache, logits), tokens = jax.lax.scan(body, (cache, logits), keys)
    return cache, logits, tokens


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg_scale", "temperature", "top_k",
                                             "top_p"))
def _generate(graphdef, params, labels, key, *, cfg_scale, temperature, top_k, top_p):
    model = cast_weights(nnx.merge(graphdef, params))
    cfg = model.cfg
    sampling = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    keys = jax.random.split(key, cfg.num_tokens)
    cache, logits = start(model, labels, cfg_scale=cfg_scale)
    _, logits, tokens = decode_loop(model, cache, logits, keys[:-1], **sampling)
    # The last token is drawn after the loop: nothing is ever fed after it.
    guided = guide(logits, cfg_scale) if cfg_scale != 1.0 else logits
    last = sample_logits(keys[-1], guided, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = jnp.concatenate([tokens.T, last[:, None]], axis=1)
    return tokens.reshape(labels.shape[0], *cfg.grid)


def generate(model: nnx.Module, labels: jax.Array, key: jax.Array, *, cfg_scale: float = 1.0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             mesh: Mesh | None = None) -> np.ndarray:
    """Samples a token grid `[B, rows, cols]` (int32, on the host) for each class in
    `labels: [B]`.

    `cfg_scale` 1.0 turns guidance off (and does not double the batch). The program is
    compiled once per model structure, batch size and sampling setting. With a `mesh`
    the batch (and the decoding caches) are split over its data axes, so `B` must be a
    multiple of their size; every process passes the same `labels` and gets all the
    tokens back. The random draws do not depend on the split (JAX's partitionable
    threefry), so a mesh gives the same images as one device.
    """
    check_generate_args(model.cfg, labels, cfg_scale=cfg_scale, temperature=temperature,
                        top_k=top_k, top_p=top_p)
    graphdef, params = nnx.split(model)
    labels = np.asarray(labels, np.int32)
    kwargs = dict(cfg_scale=float(cfg_scale), temperature=float(temperature), top_k=int(top_k),
                  top_p=float(top_p))
    if mesh is None:
        return np.asarray(_generate(graphdef, params, jnp.asarray(labels), key, **kwargs))
    local_batch_size(len(labels), mesh, "the sampling batch (config.sample.batch_size)")
    sharding = batch_sharding(mesh)
    labels = jax.make_array_from_callback(labels.shape, sharding, lambda idx: labels[idx])
    with jax.set_mesh(mesh):
        tokens = _generate(graphdef, params, labels, key, **kwargs)
    return np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
