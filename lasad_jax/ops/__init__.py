"""The LASAD operator and its variants (docs/operator.md).

Parallel forms (training, scoring): `lasad_attention`, `lasad_row_attention`,
`linear_1d_attention`, `linear_attention`, each with `impl` in `IMPLS` ("reference", the
chunkwise-parallel "chunked", "pallas", "auto" from `AUTO_TABLE` / `select_impl`).
Decoding forms (sampling, one slot at a time, constant-size state): `*_decode_init` and
`*_decode_step` for the same four variants (docs/decoding.md); `lasad_decode_step` takes
`impl` in `DECODE_IMPLS` ("xla", the fused "pallas" column update, "auto" from
`DECODE_AUTO_TABLE` / `select_decode_impl`).
"""

from lasad_jax.ops.api import (
    AUTO_TABLE,
    Auto,
    DECODE_AUTO_TABLE,
    DECODE_IMPLS,
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
    select_decode_impl,
    select_impl,
)
from lasad_jax.ops.decay import VARIANTS

__all__ = [
    "AUTO_TABLE",
    "Auto",
    "DECODE_AUTO_TABLE",
    "DECODE_IMPLS",
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
    "select_decode_impl",
    "select_impl",
]
