"""Pallas kernels of the LASAD operator: TPU (Mosaic) and GPU (Triton).

`impl="pallas"` runs `chunked.lasad_pallas`: the chunkwise-parallel split of
docs/operator.md with kernels, each behind a `jax.custom_vjp` whose backward runs kernels:
* `masked.intra_attention` (kernel bodies in masked_kernels.py): the intra-chunk output
  kernel, flash-style tiles limited to each query's chunk, the decay mask built from
  token indices in registers (no `T x T` or `C x C` array in memory); with one chunk it
  is the whole operator;
* `columns.column_outer` (chunk sums) and `columns.column_apply` (inter-chunk reads of the
  smoothed column states): per (chunk, column) products over the chunk's rows;
* between them, `states.smooth_and_pass`: the column smoothing and the pass over the chunks
  in one walk per (batch * head, feature tile), each state written once.

On GPU, with no prefix slot and whole chunks of a power-of-two grid, one `jax.custom_vjp`
covers the whole split and the kernels sum its parts themselves (`chunked._direct_split`).

And for sampling, `decode.token_update` (`decode_impl="pallas"`, GPU): the `lasad`
decoding step's column update and reads as one kernel that reads and writes one column
state in place (docs/decoding.md, "The fused decoding step").

Status (benchmarks/RESULTS.md): every kernel matches `lasad_jax.ops.reference` on CPU in
Pallas' interpret mode, both backends (values and all five gradients,
tests/ops/test_pallas_*.py), lowers for TPU (Mosaic) and CUDA (Triton IR), and compiles
to GPU code for an H200 without one (benchmarks/gpu_aot.py: XLA's deviceless GPU
compile, which also checks each kernel's shared memory). This split has not run on a GPU
or TPU yet; the kernels it replaced (a sequential in-kernel loop over
chunks) were slower than the XLA form where timed on an H200. `impl="auto"` picks a Pallas
kernel only where benchmarks/kernels.py has timed it faster than the XLA form
(`ops.api.AUTO_TABLE`).
"""

from __future__ import annotations

import jax

from lasad_jax.ops.pallas.chunked import lasad_pallas
from lasad_jax.ops.platform import target_platform
from lasad_jax.ops.pallas.masked import intra_attention


def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, width: int, num_prefix: int,
                     log_row: jax.Array, log_col: jax.Array, chunk_size: int,
                     state_dtype=None) -> jax.Array:
    """`impl="pallas"` for the `lasad` variant on the current platform: Triton on GPU,
    Mosaic on TPU, the TPU kernels in Pallas' interpret mode on CPU (exact, slow, tests).
    `state_dtype`: storage of the column states (`None`: `chunked.state_storage`)."""
    platform = target_platform()
    return lasad_pallas(q, k, v, width=width, num_prefix=num_prefix, log_row=log_row,
                        log_col=log_col, chunk_size=chunk_size, state_dtype=state_dtype,
                        interpret=platform == "cpu",
                        backend="gpu" if platform == "gpu" else "tpu")


__all__ = ["intra_attention", "lasad_pallas", "pallas_attention"]
