"""The matmul precision of the Pallas kernels, from the dtype of their inputs.

Float32 inputs get `HIGHEST` (IEEE float32 products): the float32 tests promise 1e-4
against the reference, which TF32 products would miss. 16-bit inputs get `DEFAULT`: the
kernels multiply bf16 (or fp16) operands directly, which tensor cores and the MXU do
exactly, into float32 accumulators. History: on an H200 (2026-12-04,
`benchmarks/masked_probe.py` as it then was) the masked kernel, which then cast bf16 tiles
to float32, took 2.23 ms forward at T = 256 (16 heads, D = 64) with IEEE float32 dots and
0.096 ms with TF32 ones, and its highest-precision backward took about 110 s to compile.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def precision(dtype) -> lax.Precision:
    """`HIGHEST` for float32 (and wider) inputs, `DEFAULT` for 16-bit ones."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else lax.Precision.DEFAULT
