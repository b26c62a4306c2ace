"""The LASAD operator and its variants (docs/operator.md).

Parallel forms (training, scoring): `lasad_attention`, `lasad_row_attention`,
`linear_1d_attention`, `linear_attention`, each with `impl` in `IMPLS` ("reference", the
chunkwise-parallel "chunked", "pallas", "auto" from `AUTO_TABLE` / `select_impl`).
Decoding forms (sampling, one slot at a time, constant-size state): `*_decode_init` and
`*_decode_step` for the same four variants (docs/decoding.md).
"""

from lasad_jax.ops.api import (
    AUTO_TABLE,
    Auto,
    IMPLS,
    lasad_attention,
    lasad_decode_init,
    lasad_decode_step,
    lasad_row_attention,
    lasad_row_decode_init,
    lasad_row_decode_step,
    linear_1d_attention,
    linear_1d_decode_init,
    linear_1d_decode_step,
    linear_attention,
    linear_decode_init,
    linear_decode_step,
    select_impl,
)
from lasad_jax.ops.decay import VARIANTS

__all__ = [
    "AUTO_TABLE",
    "Auto",
    "IMPLS",
    "VARIANTS",
    "lasad_attention",
    "lasad_decode_init",
    "lasad_decode_step",
    "lasad_row_attention",
    "lasad_row_decode_init",
    "lasad_row_decode_step",
    "linear_1d_attention",
    "linear_1d_decode_init",
    "linear_1d_decode_step",
    "linear_attention",
    "linear_decode_init",
    "linear_decode_step",
    "select_impl",
]
