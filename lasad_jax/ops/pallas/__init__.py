"""Pallas kernels of the LASAD operator: TPU (Mosaic) and GPU (Triton).

Two kernels, both exact, both with Pallas backward passes behind `jax.custom_vjp`
(gradients for q, k, v and both decays):
* `lasad_masked_pallas` (masked.py, masked_kernels.py): flash-style tiles of the masked
  quadratic form, the decay mask built from slot indices inside each tile (no T x T array
  in memory); TPU and GPU. Quadratic work, so it is the kernel for short and medium T.
* `lasad_chunked_pallas` (chunked.py): chunks of whole grid rows on a sequential grid axis
  carrying the per-column states in VMEM; TPU. Linear work, for long T.

Both are tested on CPU in interpret mode against `lasad_jax.ops.reference`; on this
project's CPU machines they have been lowered for TPU and GPU but not yet compiled or
timed on hardware, so `impl="auto"` does not pick them (see `ops.api.AUTO_TABLE`).
"""

from __future__ import annotations

import jax

from lasad_jax.ops.pallas.chunked import lasad_chunked_pallas
from lasad_jax.ops.pallas.masked import lasad_masked_pallas


def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, width: int, num_prefix: int,
                     log_row: jax.Array, log_col: jax.Array, chunk_size: int) -> jax.Array:
    """`impl="pallas"` for the `lasad` variant: the masked kernel when the image fits in
    one chunk of `chunk_size` tokens (and always on GPU, which has no chunked kernel yet),
    the chunked kernel with `chunk_size // width` rows per chunk otherwise. On CPU the
    kernels run in Pallas' interpret mode: exact, slow, for tests."""
    platform = jax.default_backend()
    interpret = platform == "cpu"
    kw = dict(width=width, num_prefix=num_prefix, log_row=log_row, log_col=log_col,
              interpret=interpret)
    if platform == "gpu" or q.shape[1] - num_prefix <= chunk_size:
        return lasad_masked_pallas(q, k, v, backend="gpu" if platform == "gpu" else "tpu", **kw)
    return lasad_chunked_pallas(q, k, v, rows_per_chunk=max(1, chunk_size // width), **kw)


__all__ = ["lasad_chunked_pallas", "lasad_masked_pallas", "pallas_attention"]
