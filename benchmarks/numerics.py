"""bfloat16 inputs against the float32 reference, for every variant.

    python benchmarks/numerics.py                # ~30 s on a 2-core CPU

q, k and v are drawn in float32, rounded to bfloat16, and fed to the chunked form; the
reference runs in float32 on the same rounded values, so the error shown is what the
bfloat16 path adds (states stay float32; the output is rounded to bfloat16). Error is
reported as max |out - ref| / max |ref| and as the median relative error per entry.
Prints a table and writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from common import run_info, write_json  # noqa: E402


def call(variant, q, k, v, width, row, col, impl):
    kw = dict(num_prefix=1, impl=impl, chunk_size=4 * width)
    if variant == "lasad":
        return ops.lasad_attention(q, k, v, width=width, row_decay=row, col_decay=col, **kw)
    if variant == "lasad_row":
        return ops.lasad_row_attention(q, k, v, width=width, row_decay=row, col_decay=col, **kw)
    if variant == "linear_1d":
        return ops.linear_1d_attention(q, k, v, decay=col, **kw)
    return ops.linear_attention(q, k, v, **kw)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096],
                   help="image tokens (square grids); one prefix slot is added")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/numerics_bf16_cpu.json")
    args = p.parse_args(argv)
    for tokens in args.tokens:
        if math.isqrt(tokens) ** 2 != tokens:
            raise SystemExit(f"--tokens must be perfect squares (square grids), got {tokens}")
    rng = np.random.default_rng(0)
    # Decays from sharp to none, per head.
    row = jnp.linspace(0.5, 1.0, args.heads)
    col = jnp.linspace(0.3, 1.0, args.heads)
    rows = []
    print(f"{'variant':<10} {'T':>6} {'max err / max |ref|':>20} {'median rel err':>15}")
    for tokens in args.tokens:
        width = math.isqrt(tokens)
        shape = (2, 1 + tokens, args.heads, args.dim)
        q, k, v = (jnp.asarray(rng.normal(size=shape) / math.sqrt(args.dim), jnp.bfloat16)
                   for _ in range(3))
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        for variant in ops.VARIANTS:
            ref = np.asarray(call(variant, *f32, width, row, col, "reference"), np.float64)
            out = np.asarray(call(variant, q, k, v, width, row, col, "chunked"), np.float64)
            err = np.abs(out - ref)
            worst = float(err.max() / np.abs(ref).max())
            median = float(np.median(err / np.maximum(np.abs(ref), 1e-6)))
            rows.append(dict(variant=variant, tokens=1 + tokens, max_err_over_max_ref=worst,
                             median_rel_err=median))
            print(f"{variant:<10} {1 + tokens:>6} {worst:20.2e} {median:15.2e}", flush=True)
    write_json(args.out, dict(info=run_info(heads=args.heads, dim=args.dim), rows=rows))


if __name__ == "__main__":
    main()
