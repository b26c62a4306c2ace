"""The intra-chunk Pallas kernel on a GPU: tile size and matmul precision.

    python benchmarks/masked_probe.py --out benchmarks/results/masked_probe_gpu.json

Why: the tile size of `ops.pallas.masked.default_block` was chosen on an H200
(2026-12-04) for the kernel as it then was (tiles cast to float32, TF32 dots); the kernel
now multiplies bf16 tiles directly. This times the forward of the kernel alone
(`masked.intra_attention` with one chunk: a 256 px image's whole operator; the same call
`impl="pallas"` makes there) for each tile size and for two matmul precisions of its dots,
passed explicitly: `default` (bf16 operands into float32 for bf16 inputs) and `highest`;
without the argument `ops.pallas.precision` picks by input dtype. Each row is first checked
against the chunked XLA form. On CPU the kernel only interprets: the timings then say
nothing (`--tokens 16` checks the script).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from lasad_jax.ops.pallas import masked  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402
from kernels import max_rel_diff  # noqa: E402
from op_scaling import make_inputs  # noqa: E402

# Default first: the highest-precision kernels compile slowly (tens of seconds) on a GPU.
PRECISIONS = {"default": lax.Precision.DEFAULT, "highest": lax.Precision.HIGHEST}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--min_seconds", type=float, default=0.1)
    p.add_argument("--out", default="benchmarks/results/masked_probe.json")
    args = p.parse_args(argv)
    platform = jax.default_backend()
    backend = "gpu" if platform == "gpu" else "tpu"
    info = run_info(heads=args.heads)
    rows = []
    for tokens in args.tokens:
        width = int(round(tokens**0.5))
        q, k, v, row, col = make_inputs(tokens, args.heads, args.dim, jnp.bfloat16)
        logs = dict(log_row=jnp.log(row), log_col=jnp.log(col))
        want = jax.jit(lambda q, k, v: ops.lasad_attention(
            q, k, v, width=width, row_decay=row, col_decay=col, impl="chunked",
            chunk_size=tokens))(q, k, v)
        for prec_name, prec in PRECISIONS.items():
            for block in args.blocks:
                fn = jax.jit(lambda q, k, v, b=block, p=prec: masked.intra_attention(
                    q, k, v, width=width, block_q=b, block_k=b, precision=p,
                    interpret=platform == "cpu", backend=backend, **logs).astype(q.dtype))
                r = dict(tokens=tokens, dim=args.dim, precision=prec_name, block=block)
                try:
                    r["err_vs_chunked"] = max_rel_diff(fn(q, k, v), want)
                    r["ms"] = median_ms(fn, q, k, v, repeats=5, min_seconds=args.min_seconds)
                except Exception as e:  # a tile this lowering refuses
                    r["status"] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
                rows.append(r)
                write_json(args.out, dict(info=info, complete=False, rows=rows), quiet=True)
                print(r, flush=True)
    write_json(args.out, dict(info=info, complete=True, rows=rows))
    return rows


if __name__ == "__main__":
    main()
