"""The matmul precision of the Pallas kernels, from the dtype of their inputs.

Why it depends on the dtype: on an H200 (2026-12-04, `benchmarks/masked_probe.py`), the
masked kernel's forward at T = 256 (16 heads, D = 64, bf16 inputs) took 2.23 ms with IEEE
float32 dots (`Precision.HIGHEST`, 128-token tiles) and 0.096 ms with the default
precision (TF32 on GPU, 64-token tiles), and the highest-precision backward took about
110 s to compile. TF32 keeps 10 mantissa bits, so bfloat16 inputs (8 bits) multiply
exactly; only the rounding of the decay-weighted scores before the second product adds
an error, 2^-11 relative, below the 2^-9 of the bfloat16 output. Float32 inputs keep
`HIGHEST`: the float32 tests promise 1e-4 against the reference, which TF32 would miss.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def precision(dtype) -> lax.Precision:
    """`HIGHEST` for float32 (and wider) inputs, `DEFAULT` for 16-bit ones."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else lax.Precision.DEFAULT
