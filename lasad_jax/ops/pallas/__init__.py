"""Pallas kernels of the LASAD operator: TPU (Mosaic) and GPU (Triton).

Two kernels, both exact, both with Pallas backward passes behind `jax.custom_vjp`
(gradients for q, k, v and both decays), both for TPU and GPU:
* `lasad_masked_pallas` (masked.py, masked_kernels.py): flash-style tiles of the masked
  quadratic form, the decay mask built from slot indices inside each tile (no T x T array
  in memory). Quadratic work, so it is the kernel for short and medium T.
* `lasad_chunked_pallas` (chunked.py; GPU runner in chunked_gpu.py): chunks of whole grid
  rows carrying the per-column states. TPU: a sequential grid axis with the states in VMEM;
  GPU: an in-kernel loop over chunks with the states in the loop carry, on a grid padded to
  Triton's power-of-two sizes (exact). Linear work, for long T.

Measured so far, and only this (benchmarks/RESULTS.md): all kernels, on both backends,
match `lasad_jax.ops.reference` on CPU in Pallas' interpret mode (values and all
gradients) and lower for TPU (Mosaic) and CUDA (Triton IR). On an NVIDIA H200 (JAX 0.11.2,
2026-12-04) the GPU kernels compile and match the reference within 1e-4 in float32
(tests/ops/test_pallas_api.py), and,
with the IEEE float32 dots they then used for every input, the masked kernel was 25 to 50
times slower than the XLA chunked form at T = 256 and 1024; the dots now follow the input
dtype (`precision.py`: TF32 for bfloat16 inputs, 23x faster in a forward-only probe), not
yet timed end to end. The chunked GPU kernel has not been timed, no TPU has run any of
them. So `impl="auto"` does not pick them (`ops.api.AUTO_TABLE`).
"""

from __future__ import annotations

import jax

from lasad_jax.ops.pallas.chunked import lasad_chunked_pallas
from lasad_jax.ops.pallas.masked import lasad_masked_pallas


def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, width: int, num_prefix: int,
                     log_row: jax.Array, log_col: jax.Array, chunk_size: int) -> jax.Array:
    """`impl="pallas"` for the `lasad` variant, on TPU and GPU alike: the masked kernel when
    the image fits in one chunk of `chunk_size` tokens, the chunked kernel otherwise.

    The chunked kernel gets `chunk_size // width` rows per chunk; on GPU that is an upper
    bound, capped at `chunked_gpu.CHUNK_TOKENS` tokens (Triton tiles stay small), so there
    `chunk_size` only decides which kernel runs. The masked-versus-chunked threshold is the
    XLA chunked form's rule, not a timing of these kernels. On CPU the TPU kernels run in
    Pallas' interpret mode: exact, slow, for tests.
    """
    platform = jax.default_backend()
    backend = "gpu" if platform == "gpu" else "tpu"
    kw = dict(width=width, num_prefix=num_prefix, log_row=log_row, log_col=log_col,
              interpret=platform == "cpu", backend=backend)
    if q.shape[1] - num_prefix <= chunk_size:
        return lasad_masked_pallas(q, k, v, **kw)
    return lasad_chunked_pallas(q, k, v, rows_per_chunk=max(1, chunk_size // width), **kw)


__all__ = ["lasad_chunked_pallas", "lasad_masked_pallas", "pallas_attention"]
