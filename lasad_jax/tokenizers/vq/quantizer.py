"""The VQ-16 vector quantizer: nearest codebook entry on the unit sphere.

LlamaGen l2-normalises both the encoder's vectors and the codebook rows every time it
looks codes up, and measures distances (and the losses) between those normalised vectors.
Doing the same here, on every call, keeps codes identical to the original for any
codebook, including a raw (unnormalised) one, and keeps training on the sphere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# torch.nn.functional.normalize's default: divide by max(norm, eps).
NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / max(||x||, 1e-12), the exact rule of torch's F.normalize (no NaN at zero)."""
    n = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(n, NORMALIZE_EPS)


class VectorQuantizer(nnx.Module):
    """Maps `[..., dim]` vectors to the index of the nearest l2-normalised codebook row.

    `embedding` is the `[codebook_size, dim]` table (LlamaGen's `quantize.embedding.weight`).
    """

    def __init__(self, codebook_size: int, dim: int, beta: float, rngs: nnx.Rngs):
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        # LlamaGen's initialisation: uniform in +-1/n, then normalised onto the sphere.
        init = jax.random.uniform(rngs.params(), (codebook_size, dim), jnp.float32,
                                  -1.0 / codebook_size, 1.0 / codebook_size)
        self.embedding = nnx.Param(l2_normalize(init))

    def codebook(self) -> jax.Array:
        """The codebook as used for lookup: every row l2-normalised."""
        return l2_normalize(self.embedding[...])

    def distances(self, z: jax.Array) -> jax.Array:
        """Squared distances `[M, codebook_size]` from the `M` vectors of `z [..., dim]` to
        the normalised codebook rows, as the expanded |z|^2 + |e|^2 - 2 z.e the original
        uses, so that near-ties resolve the same way."""
        e = self.codebook()
        flat = z.reshape(-1, self.dim)
        return (jnp.sum(flat * flat, axis=1, keepdims=True) + jnp.sum(e * e, axis=1)[None, :]
                - 2.0 * flat @ e.T)

    def nearest(self, z: jax.Array) -> jax.Array:
        """Indices `[...]` of the nearest codebook rows to normalised vectors `z [..., dim]`
        (argmin keeps the lowest index on exact ties)."""
        return _nearest(self.distances(z), z.shape[:-1])

    def lookup(self, codes: jax.Array) -> jax.Array:
        """Codes `[...]` -> normalised codebook vectors `[..., dim]`."""
        return jnp.take(self.codebook(), codes, axis=0)

    def __call__(self, z: jax.Array, entropy: bool = False,
                 ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Quantizes `z [N, h, w, dim]`.

        Returns `(quantized, codes, aux)`: `quantized` has the value of the normalised
        codebook vectors and the gradient of the normalised inputs (straight-through);
        `codes` is int32 `[N, h, w]`; `aux` holds `codebook_loss` (pulls codes towards the
        encoder), `commitment_loss` (beta times the reverse pull on the encoder), and
        `codebook_usage`, the fraction of codebook rows chosen at least once in this batch.
        LlamaGen tracks usage over a rolling window of its last 65,536 codes instead; a
        per-batch fraction needs no mutable buffer inside a jitted step, and a caller can
        average it over steps. With `entropy`, `aux` also holds `entropy_loss`
        (`codebook_entropy_loss` of the negative distances); it costs a softmax over the
        whole codebook per vector, so it is computed only when asked for.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"quantizer input must have last dimension {self.dim} "
                             f"(codebook_dim), got shape {z.shape}")
        z = l2_normalize(z)
        d = self.distances(z)
        codes = _nearest(d, z.shape[:-1])
        zq = self.lookup(codes)
        sg = jax.lax.stop_gradient
        codebook_loss = jnp.mean((zq - sg(z)) ** 2)
        commitment_loss = self.beta * jnp.mean((sg(zq) - z) ** 2)
        hit = jnp.zeros((self.codebook_size,), jnp.float32).at[codes.reshape(-1)].set(1.0)
        aux = {"codebook_loss": codebook_loss, "commitment_loss": commitment_loss,
               "codebook_usage": jnp.sum(hit) / self.codebook_size}
        if entropy:
            aux["entropy_loss"] = codebook_entropy_loss(-d)
        return z + sg(zq - z), codes, aux


def _nearest(distances: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """int32 codes of `shape` from `[M, codebook_size]` distances (the lowest index on an
    exact tie)."""
    return jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(shape)


# LlamaGen's temperature for the soft assignment of the entropy term.
ENTROPY_TEMPERATURE = 0.01


def codebook_entropy_loss(affinity: jax.Array,
                          temperature: float = ENTROPY_TEMPERATURE) -> jax.Array:
    """LlamaGen's codebook entropy term (`--entropy-loss-ratio`, weighted by
    `loss.entropy_weight`): with `p = softmax(affinity / temperature)` per vector
    (`affinity [M, K]`, negative distances), the mean entropy of each `p` minus the
    entropy of their average. Lowering it makes each vector pick one code firmly while the
    batch as a whole spreads over the codebook. As in LlamaGen, the average's entropy
    takes `log(p + 1e-5)`. Scalar float32."""
    logits = affinity.astype(jnp.float32) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    sample_entropy = -jnp.mean(jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    average = jnp.mean(probs, axis=0)
    average_entropy = -jnp.sum(average * jnp.log(average + 1e-5))
    return sample_entropy - average_entropy
