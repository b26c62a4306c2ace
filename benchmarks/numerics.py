"""bfloat16 inputs against the float32 reference, for every variant, outputs and gradients.

    python benchmarks/numerics.py                # ~5 min on a 2-core CPU
    python benchmarks/numerics.py --pallas       # + the Pallas split, ~15 min

q, k and v are drawn in float32, rounded to bfloat16, and fed to the chunked form (chunks
of 4 grid rows, so states pass between many chunks); the reference runs in float32 on the
same rounded values, so the error shown is what the bfloat16 path adds: the intra-chunk
products and chunk sums run on bf16 operands (scores and decayed keys rounded to bf16
before their matmul), states and the inter-chunk read stay float32, the output is rounded
to bf16. Gradients:
of `sum(out * ct)` for a random float32 `ct`, to q, k, v (bf16) and the decays (float32).
Error is max |x - ref| / max |ref| per output (the forward's median relative error per
entry too). Prints a table and writes JSON to `--out`.

`--pallas` adds the `lasad` variant through the Pallas split (`impl="pallas"`'s kernels,
the GPU versions in the interpreter, same chunks) with its column states stored in
float32 and in bfloat16 (`ops.pallas.chunked`, "State storage"): what the storage
costs in precision, next to the XLA form's float32 states.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from common import run_info, write_json  # noqa: E402


def call(variant, q, k, v, width, row, col, impl):
    if impl.startswith("pallas:"):  # "pallas:<state dtype>", lasad only
        from lasad_jax.ops.pallas import lasad_pallas

        return lasad_pallas(q, k, v, width=width, num_prefix=1, log_row=jnp.log(row),
                            log_col=jnp.log(col), chunk_size=4 * width, interpret=True,
                            backend="gpu", state_dtype=impl.split(":")[1])
    kw = dict(num_prefix=1, impl=impl, chunk_size=4 * width)
    if variant == "lasad":
        return ops.lasad_attention(q, k, v, width=width, row_decay=row, col_decay=col, **kw)
    if variant == "lasad_row":
        return ops.lasad_row_attention(q, k, v, width=width, row_decay=row, col_decay=col, **kw)
    if variant == "linear_1d":
        return ops.linear_1d_attention(q, k, v, decay=col, **kw)
    return ops.linear_attention(q, k, v, **kw)


def worst(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096],
                   help="image tokens (square grids); one prefix slot is added")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pallas", action="store_true",
                   help="also the lasad variant through the Pallas split (interpreted), with "
                        "float32 and with bfloat16 state storage")
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
    forms = [(variant, "chunked") for variant in ops.VARIANTS]
    if args.pallas:
        forms += [("lasad", "pallas:float32"), ("lasad", "pallas:bfloat16")]
    print(f"{'variant':<10} {'form':<16} {'T':>6} {'out':>9} {'median':>9} {'dq':>9} "
          f"{'dk':>9} {'dv':>9} {'d row':>9} {'d col':>9}   (max err / max |ref|)")
    for tokens in args.tokens:
        width = math.isqrt(tokens)
        shape = (2, 1 + tokens, args.heads, args.dim)
        q, k, v = (jnp.asarray(rng.normal(size=shape) / math.sqrt(args.dim), jnp.bfloat16)
                   for _ in range(3))
        ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        refs = {}  # variant -> the float32 reference's output and gradients
        for variant, form in forms:
            def run(impl, q, k, v, row, col, variant=variant):
                out, pullback = jax.vjp(
                    lambda q, k, v, row, col: call(variant, q, k, v, width, row, col, impl),
                    q, k, v, row, col)
                return out, pullback(ct.astype(out.dtype))

            if variant not in refs:
                refs[variant] = jax.jit(run, static_argnums=0)("reference", *f32, row, col)
            ref, ref_grads = refs[variant]
            out, grads = jax.jit(run, static_argnums=0)(form, q, k, v, row, col)
            ref64 = np.asarray(ref, np.float64)
            median = float(np.median(np.abs(np.asarray(out, np.float64) - ref64)
                                     / np.maximum(np.abs(ref64), 1e-6)))
            errs = [worst(g, r) for g, r in zip(grads, ref_grads)]
            if variant in ("linear_1d", "linear"):
                errs[3] = None  # no row decay (linear_1d's one decay is `col`)
            if variant == "linear":
                errs[4] = None
            names = ("dq", "dk", "dv", "d_row_decay", "d_col_decay")
            row_ = dict(variant=variant, form=form, tokens=1 + tokens,
                        max_err_over_max_ref=worst(out, ref), median_rel_err=median,
                        **dict(zip(names, errs)))
            rows.append(row_)
            cells = " ".join(f"{x:9.2e}" if x is not None else f"{'-':>9}" for x in errs)
            print(f"{variant:<10} {form:<16} {1 + tokens:>6} {row_['max_err_over_max_ref']:9.2e} "
                  f"{median:9.2e} {cells}", flush=True)
    write_json(args.out, dict(info=run_info(heads=args.heads, dim=args.dim), rows=rows))


if __name__ == "__main__":
    main()
