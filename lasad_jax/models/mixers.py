"""Token mixers: the linear-attention family (LASAD and its ablations) and softmax.

Every mixer has the same two entry points, so the block and the sampler never branch
on the mixer:

* `__call__(x, slots)`: the parallel form over a whole sequence `x: [B, T, dim]`;
* `init_cache(batch)` / `decode(cache, x, slot)`: one slot `x: [B, dim]` at a time,
  carrying a fixed-size recurrent state (linear family) or a KV cache (softmax).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lasad_jax import ops
from lasad_jax.ops.decode import rms_normalize
from lasad_jax.ops.platform import target_platform
from lasad_jax.models.config import ModelConfig
from lasad_jax.models.layers import linear, rope_2d
from lasad_jax.parallel.rules import batch_axes, names_along, per_shard

_FEATURE_MAPS = {
    "identity": lambda x: x,
    "silu": jax.nn.silu,
    "elu1": lambda x: jax.nn.elu(x) + 1.0,
    "relu": jax.nn.relu,
}
# Logical axes of the operator's q, k, v and output, `[B, T, heads, D]`, and of the
# decoding step's, `[B, heads, D]`.
_TOKENS = ("batch", None, "heads", None)
_STEP = ("batch", None, None)


class DecodeKernel(nnx.Variable):
    """A layer's fused decoding projection (`LinearAttentionMixer.decode_projection`),
    formed by the sampler before its loop on its own copy of the model; not a parameter."""


def initial_decays(heads: int, lo: float, hi: float) -> jax.Array:
    """Per-head decays `1 - 2^-e` with `e` spread evenly over [lo, hi] (RetNet's recipe
    of one fixed time scale per head, here learnable): short- and long-range heads."""
    e = jnp.linspace(lo, hi, heads) if heads > 1 else jnp.array([(lo + hi) / 2])
    return 1.0 - 2.0 ** (-e)


def split_heads(qkv: jax.Array, heads: int, head_dim: int) -> tuple[jax.Array, ...]:
    """`[..., 3 * heads * head_dim]` -> q, k, v `[..., heads, head_dim]`.

    The fused projection's output is laid out head-major (each head's q, k, v together),
    so splitting it over the `tensor` mesh axis gives every device whole heads and the
    reshape needs no communication."""
    qkv = qkv.reshape(*qkv.shape[:-1], heads, 3, head_dim)
    return qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]


def _logit(p: jax.Array) -> jax.Array:
    return jnp.log(p) - jnp.log1p(-p)


class LinearAttentionMixer(nnx.Module):
    """Gated linear attention with the decay of `cfg.mixer` (lasad, lasad_row,
    linear_1d or linear).

    q and k go through a feature map (and 2D RoPE unless `pos_encoding="none"`); the
    operator's output is an unnormalised sum, so each head is RMS-normalised before an
    output gate computed from the block input. Decays are learnable per head, kept in
    (0, 1) by a sigmoid: rows and columns start at `1 - 2^-[1..5]` (0.5 to 0.97 per grid
    step), the 1D raster decay at `1 - 2^-[3..8]` because a raster step is a smaller
    spatial step than a row.
    """

    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        d, h = cfg.dim, cfg.num_heads
        self.qkv = linear(d, 3 * d, dtype, rngs, axes=("embed", "heads"))
        self.out = linear(d, d, dtype, rngs, axes=("heads", "embed"))
        if cfg.gate != "none":
            if cfg.gate_factor_rank:
                rank = cfg.gate_factor_rank
                self.gate_down = linear(d, rank, dtype, rngs, axes=("embed", None))
                self.gate_up = linear(rank, d, dtype, rngs, axes=(None, "heads"))
            else:
                self.gate_up = linear(d, d, dtype, rngs, axes=("embed", "heads"))
        norm = {"logical_axes": ("norm",)}
        self.head_norm = nnx.Param(jnp.ones((d,), jnp.float32), **norm)
        if cfg.mixer in ("lasad", "lasad_row"):
            self.row_logit = nnx.Param(_logit(initial_decays(h, 1.0, 5.0)), **norm)
            self.col_logit = nnx.Param(_logit(initial_decays(h, 1.0, 5.0)), **norm)
        elif cfg.mixer == "linear_1d":
            self.decay_logit = nnx.Param(_logit(initial_decays(h, 3.0, 8.0)), **norm)

    # -- pieces shared by both forms

    def _decays(self) -> dict[str, jax.Array]:
        if self.cfg.mixer in ("lasad", "lasad_row"):
            return {"row_decay": jax.nn.sigmoid(self.row_logit[...]),
                    "col_decay": jax.nn.sigmoid(self.col_logit[...])}
        if self.cfg.mixer == "linear_1d":
            return {"decay": jax.nn.sigmoid(self.decay_logit[...])}
        return {}

    def _project(self, x: jax.Array, fused: bool) -> tuple[jax.Array, jax.Array | None]:
        """The projections of `x: [..., dim]`: q, k, v (`[..., 3 dim]`) and the gate's
        pre-activation (`[..., dim]`; None without a gate). `fused`: both as one matmul.

        Why fused when decoding: a token's matmuls are too small to fill a GPU, so each
        costs about a launch. Compiled for an H200 (benchmarks/gpu_aot.py), the gate's
        separate down-projection was two kernels per layer and token (a split-K matmul and
        its reduction), and its up-projection one more. Fused, the gate rides in the
        q/k/v matmul: its kernel there is the low-rank pair's product `[dim, dim]`
        (`decode_projection`; a token then reads `dim^2 - 2 dim r` more weights per layer,
        about 2% of its bytes for LASADGen-B). The sampler forms that kernel once before
        its loop (`DecodeKernel`, `sampling.generate.cast_weights`); without it, it is
        formed here. Training keeps the projections apart: its matmuls are large, the
        low-rank pair is what it learns, and one kernel per parameter keeps the gradients
        and the sharding simple."""
        cfg = self.cfg
        if cfg.gate == "none":
            return self.qkv(x), None
        if not fused:
            pre = self.gate_up(self.gate_down(x) if cfg.gate_factor_rank else x)
            return self.qkv(x), pre
        kernel = getattr(self, "decode_kernel", None)
        kernel = self.decode_projection() if kernel is None else kernel[...]
        both = jnp.dot(x.astype(self.dtype), kernel)
        return both[..., :3 * cfg.dim], both[..., 3 * cfg.dim:]

    def decode_projection(self) -> jax.Array | None:
        """The fused decoding projection's kernel `[dim, 4 dim]` in the compute dtype:
        q, k, v and the gate's pre-activation (None without a gate). The low-rank gate's
        part is its factors' product, each factor taken as its layer would use it (in the
        compute dtype), multiplied in float32 and rounded once, so that casting the weights
        first (`sampling.generate.cast_weights`) changes nothing. The sampler forms it
        once before its loop (`DecodeKernel`): left inside, XLA recomputed the product at
        every token (compiled for an H200; a `[dim, dim]` product is larger than its
        factors, which XLA's loop-invariant code motion declines to hoist)."""
        cfg = self.cfg
        if cfg.gate == "none":
            return None
        gate = self.gate_up.kernel[...]
        if cfg.gate_factor_rank:
            down, up = (w.astype(self.dtype).astype(jnp.float32)
                        for w in (self.gate_down.kernel[...], gate))
            gate = jnp.dot(down, up, precision=jax.lax.Precision.HIGHEST)
        return jnp.concatenate([self.qkv.kernel[...].astype(self.dtype),
                                gate.astype(self.dtype)], axis=1)

    def _qkv(self, proj: jax.Array, slots: jax.Array) -> tuple[jax.Array, ...]:
        """q, k, v from their projection `proj: [..., 3 dim]` (`_project`)."""
        cfg = self.cfg
        q, k, v = split_heads(proj, cfg.num_heads, cfg.head_dim)
        phi = _FEATURE_MAPS[cfg.feature_map]
        q, k = phi(q) * (1.0 / math.sqrt(cfg.head_dim)), phi(k)
        if cfg.pos_encoding == "rope2d":
            pos = dict(num_prefix=cfg.num_prefix, width=cfg.grid[1], base=cfg.rope_base)
            q, k = rope_2d(q, slots, **pos), rope_2d(k, slots, **pos)
        return q, k, v

    def _gate(self, pre: jax.Array) -> jax.Array:
        """The output gate, in the compute dtype, from its pre-activation (`_project`)."""
        return jax.nn.sigmoid(pre) if self.cfg.gate == "sigmoid" else jax.nn.silu(pre)

    def _output(self, o: jax.Array, x: jax.Array, gate_pre: jax.Array | None) -> jax.Array:
        """Per-head RMSNorm and its weight, the gate, the output projection: `o: [...,
        heads, Dv]`, `x: [..., dim]`. The gate multiplies in the compute dtype (in bf16
        the training step keeps one bf16 tensor for it); the `lasad` decoding step forms
        the same product in float32 on chip instead (`_out_scale`), which rounds once."""
        o32 = rms_normalize(o, self.cfg.norm_eps).reshape(*x.shape)
        o = (o32 * self.head_norm[...]).astype(self.dtype)
        if gate_pre is not None:
            o = o * self._gate(gate_pre)
        return self.out(o)

    def _out_scale(self, gate_pre: jax.Array | None) -> jax.Array:
        """What multiplies the head-normalised output in the `lasad` decoding step, float32
        `[..., dim]` (`[dim]` without a gate): the head norm's weight times the gate."""
        scale = self.head_norm[...]
        return scale if gate_pre is None else scale * self._gate(gate_pre).astype(jnp.float32)

    # -- parallel form

    def __call__(self, x: jax.Array, slots: jax.Array) -> jax.Array:
        cfg = self.cfg
        proj, gate_pre = self._project(x, fused=False)
        q, k, v = self._qkv(proj, slots)
        common = dict(num_prefix=cfg.num_prefix, impl=cfg.impl, chunk_size=cfg.chunk_size)
        width = {"width": cfg.grid[1]} if cfg.mixer in ("lasad", "lasad_row") else {}
        fn = {"lasad": ops.lasad_attention, "lasad_row": ops.lasad_row_attention,
              "linear_1d": ops.linear_1d_attention, "linear": ops.linear_attention}[cfg.mixer]
        decays = self._decays()
        names = tuple(decays)

        def attend(q, k, v, *decay_values):
            return fn(q, k, v, **width, **dict(zip(names, decay_values)), **common)

        # Per shard under a mesh: batch rows and heads are independent, and XLA cannot
        # split the operator's Pallas kernels itself (`parallel.rules.per_shard`).
        o = per_shard(attend, (_TOKENS,) * 3 + (("heads",),) * len(names), _TOKENS)(
            q, k, v, *decays.values())
        return self._output(o, x, gate_pre)

    # -- decoding form

    def init_cache(self, batch: int) -> Any:
        cfg, h, d = self.cfg, self.cfg.num_heads, self.cfg.head_dim
        state = jnp.dtype(cfg.decode_state_dtype)
        if cfg.mixer == "lasad":
            # Raw keys and values are kept in the compute dtype: exact, and half the bytes
            # in bfloat16; the column states in `decode_state_dtype` (float32 by default).
            return ops.lasad_decode_init(batch, h, d, d, cfg.grid[1], state,
                                         prefix_slots=cfg.num_prefix, kv_dtype=self.dtype)
        if cfg.mixer == "lasad_row":
            return ops.lasad_row_decode_init(batch, h, d, d, cfg.grid[1], state)
        return ops.linear_decode_init(batch, h, d, d, state)

    def decode(self, cache: Any, x: jax.Array, slot: jax.Array) -> tuple[jax.Array, Any]:
        cfg = self.cfg
        proj, gate_pre = self._project(x, fused=True)
        q, k, v = self._qkv(proj, slot)
        fn = {"lasad": ops.lasad_decode_step, "lasad_row": ops.lasad_row_decode_step,
              "linear_1d": ops.linear_1d_decode_step,
              "linear": ops.linear_decode_step}[cfg.mixer]
        # The `lasad` step applies the head norm and `_out_scale` itself: in the fused
        # kernel's epilogue, two kernels fewer per layer and token than in XLA after it.
        lasad = cfg.mixer == "lasad"
        extra: tuple[jax.Array, ...] = ()
        if lasad:
            scale = jnp.broadcast_to(self._out_scale(gate_pre), x.shape)
            extra = (scale.reshape(v.shape),)
        decays = self._decays()
        names = tuple(decays)

        def step(cache, q, k, v, *rest):
            kwargs = dict(zip(names, rest[len(extra):]))
            if lasad:
                kwargs.update(impl=cfg.decode_impl, norm_eps=cfg.norm_eps, out_scale=rest[0])
            return fn(cache, q, k, v, num_prefix=cfg.num_prefix, **kwargs)

        # Per shard under a mesh, as the parallel form: the sampler splits the cache by
        # batch only (its arrays merge batch and heads, batch-major), so heads stay whole.
        state = names_along(batch_axes(self.init_cache, x.shape[0]), cache)
        inputs = (q, k, v, *extra)
        o, cache = per_shard(step, (state,) + (_STEP,) * len(inputs) + ((None,),) * len(names),
                             (_STEP, state))(cache, *inputs, *decays.values())
        if lasad:
            return self.out(o.reshape(x.shape)), cache
        return self._output(o, x, gate_pre), cache


def attention_impl(q: jax.Array) -> str | None:
    """The softmax baseline's attention kernel: cuDNN's flash attention on NVIDIA GPUs for
    16-bit inputs and head sizes it takes (`"cudnn"`), splash attention on TPU
    (`"splash"`, `models.tpu_attention`), else XLA's (`None`).

    Why: a comparison against softmax attention is only as honest as that attention is
    fast. `jax.nn.dot_product_attention` left to itself runs XLA's, which writes the full
    `T x T` scores (JAX 0.11: "defaults to XLA for now"); LlamaGen trains with fused
    attention. Compiled for an H200 (benchmarks/gpu_aot.py, stage train), the choice is
    recorded per row; compiled for TPU slices (benchmarks/tpu_aot.py), splash attention
    takes every head size and dtype the models use."""
    platform = target_platform()
    d = q.shape[-1]
    if platform == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and d <= 128 and d % 8 == 0:
        return "cudnn"
    return "splash" if platform == "tpu" else None


def causal_softmax(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal softmax attention of `[B, T, heads, D]` arrays with `attention_impl`'s kernel.
    Splash attention is a Pallas kernel, which XLA cannot split over a mesh: it runs per
    shard (`parallel.rules.per_shard`), batch rows and heads being independent."""
    impl = attention_impl(q)
    if impl == "splash":
        from lasad_jax.models.tpu_attention import splash_causal

        return per_shard(splash_causal, (_TOKENS,) * 3, _TOKENS)(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


class SoftmaxMixer(nnx.Module):
    """Causal softmax attention with 2D RoPE: LlamaGen's baseline, for comparisons."""

    def __init__(self, cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs):
        self.cfg = cfg
        self.qkv = linear(cfg.dim, 3 * cfg.dim, dtype, rngs, axes=("embed", "heads"))
        self.out = linear(cfg.dim, cfg.dim, dtype, rngs, axes=("heads", "embed"))

    def _qkv(self, x: jax.Array, slots: jax.Array) -> tuple[jax.Array, ...]:
        cfg = self.cfg
        q, k, v = split_heads(self.qkv(x), cfg.num_heads, cfg.head_dim)
        pos = dict(num_prefix=cfg.num_prefix, width=cfg.grid[1], base=cfg.rope_base)
        return rope_2d(q, slots, **pos), rope_2d(k, slots, **pos), v

    def __call__(self, x: jax.Array, slots: jax.Array) -> jax.Array:
        q, k, v = self._qkv(x, slots)
        return self.out(causal_softmax(q, k, v).reshape(x.shape))

    def init_cache(self, batch: int) -> dict[str, jax.Array]:
        """Keys and values of every slot the sampler can feed (prefix + grid - 1), in the
        compute dtype, `[batch * heads, slot, head_dim]`: both products of a step are then
        batched matmuls over the cache as it lies, at every batch size. Other layouts made
        XLA rewrite the whole cache at every token (CPU, float32; docs/decoding.md): with
        the slot axis first or second it transposed the cache, and with a batch axis of
        size one (one image, no guidance) it copied it."""
        cfg = self.cfg
        shape = (batch * cfg.num_heads, cfg.num_prefix + cfg.num_tokens, cfg.head_dim)
        dtype = self.qkv.dtype or jnp.float32
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def decode(self, cache: dict[str, jax.Array], x: jax.Array,
               slot: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Attends over the whole fixed-size cache with the unwritten slots masked (one
        program for every position). Products run in the cache's dtype and accumulate in
        float32 (`preferred_element_type`), so a bf16 cache is never converted as a whole.
        The cache is written in place, then only the written version is read."""
        q, k, v = self._qkv(x, slot)
        dt = cache["k"].dtype
        rows = q.shape[0] * q.shape[1]
        q, k, v = (t.reshape(rows, t.shape[-1]).astype(dt) for t in (q, k, v))
        ck = jax.lax.dynamic_update_index_in_dim(cache["k"], k, slot, 1)
        cv = jax.lax.dynamic_update_index_in_dim(cache["v"], v, slot, 1)
        scores = jnp.einsum("nd,ntd->nt", q, ck, preferred_element_type=jnp.float32)
        scores = scores * (1.0 / math.sqrt(self.cfg.head_dim))
        valid = jnp.arange(ck.shape[1]) <= slot
        probs = jax.nn.softmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
        o = jnp.einsum("nt,ntd->nd", probs.astype(dt), cv, preferred_element_type=jnp.float32)
        return self.out(o.astype(x.dtype).reshape(x.shape)), {"k": ck, "v": cv}


def make_mixer(cfg: ModelConfig, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.mixer == "softmax":
        return SoftmaxMixer(cfg, dtype, rngs)
    return LinearAttentionMixer(cfg, dtype, rngs)
