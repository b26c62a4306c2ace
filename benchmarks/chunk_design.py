"""Measures the design choices inside the chunked LASAD form (benchmarks/RESULTS.md).

    python benchmarks/chunk_design.py            # ~2 min on a 2-core CPU

1. Rematerialising each chunk in the backward pass (`jax.checkpoint` on the scan body)
   against keeping every chunk's residuals, at T = 4096 and 16384.
2. The column smoothing `H(c) = sum_c' b^|c-c'| A(c')` of a `[1, 8, w, 64, 64]` state:
   the `w x w` Toeplitz matmul the library uses, against two scan-style forms that do
   O(1) work per entry (`lax.associative_scan`, and a sequential `lax.scan` over columns),
   defined here only for the comparison.

Prints a table and writes JSON to `--out`.
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
from lasad_jax.ops.chunked import DEFAULT_CHUNK_SIZE, chunked_attention  # noqa: E402
from lasad_jax.ops.decay import smooth_columns  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402


def jax_bench(fn, *args) -> float:
    return median_ms(jax.jit(fn), *args)


def smooth_assoc(a, log_b):
    """Two first-order recurrences across columns with `lax.associative_scan`."""
    b = jnp.broadcast_to(jnp.exp(log_b)[:, None, None, None], a.shape[1:])[None]
    b = jnp.broadcast_to(b, a.shape)

    def combine(x, y):
        return x[0] * y[0], y[0] * x[1] + y[1]

    _, left = jax.lax.associative_scan(combine, (b, a), axis=2)
    _, right = jax.lax.associative_scan(combine, (b, a), axis=2, reverse=True)
    return left + right - a


def smooth_sequential(a, log_b):
    """The same recurrences as a sequential `lax.scan` over the columns."""
    cols = jnp.moveaxis(a, 2, 0)
    b = jnp.exp(log_b)[None, :, None, None]

    def left(c, x):
        c = b * c + x
        return c, c

    def right(c, x):
        return b * (x + c), c

    _, lo = jax.lax.scan(left, jnp.zeros_like(cols[0]), cols)
    _, hi = jax.lax.scan(right, jnp.zeros_like(cols[0]), cols, reverse=True)
    return jnp.moveaxis(lo + hi, 0, 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384],
                   help="square-grid lengths for the rematerialisation comparison")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128],
                   help="grid widths for the smoothing comparison")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/chunk_design_cpu.json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []

    heads, dim = args.heads, args.dim
    row = jnp.linspace(0.5, 0.99, heads)
    col = jnp.linspace(0.6, 0.95, heads)
    for tokens in args.tokens:
        width = int(math.isqrt(tokens))
        q, k, v = (jnp.asarray(rng.normal(size=(1, tokens, heads, dim)) / 8, jnp.float32)
                   for _ in range(3))
        for remat in (True, False):
            def loss(q, k, v, row, col, remat=remat):
                out = chunked_attention("lasad", q, k, v, width=width, num_prefix=0,
                                        log_row=jnp.log(row), log_col=jnp.log(col),
                                        chunk_size=DEFAULT_CHUNK_SIZE, remat=remat)
                return out.sum()

            ms = jax_bench(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)), q, k, v, row, col)
            rows.append(dict(test="remat", tokens=tokens, remat=remat, fwd_bwd_ms=ms))
            print(f"remat={remat!s:<5} T={tokens:<6} fwd+bwd {ms:9.1f} ms", flush=True)

    for width in args.widths:
        a = jnp.asarray(rng.normal(size=(1, heads, width, dim, dim)), jnp.float32)
        log_b = jnp.log(col)
        forms = {"toeplitz (library)": smooth_columns, "associative_scan": smooth_assoc,
                 "sequential scan": smooth_sequential}
        want = np.asarray(smooth_columns(a, log_b))
        for name, fn in forms.items():
            err = float(np.max(np.abs(np.asarray(jax.jit(fn)(a, log_b)) - want)) / np.max(np.abs(want)))
            fwd = jax_bench(fn, a, log_b)
            grad = jax_bench(jax.grad(lambda a, lb, fn=fn: (fn(a, lb) * a).sum(), argnums=(0, 1)), a, log_b)
            rows.append(dict(test="smoothing", width=width, form=name, fwd_ms=fwd, fwd_bwd_ms=grad,
                             rel_err_vs_toeplitz=err))
            print(f"smoothing w={width:<4} {name:<20} fwd {fwd:8.2f} ms  fwd+bwd {grad:8.2f} ms"
                  f"  rel.err {err:.1e}", flush=True)

    write_json(args.out, dict(info=run_info(heads=heads, dim=dim), rows=rows))


if __name__ == "__main__":
    main()
