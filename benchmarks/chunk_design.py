"""Measures the design choices inside the chunked LASAD form (benchmarks/RESULTS.md).

    python benchmarks/chunk_design.py            # ~15 min on a 2-core CPU
    python benchmarks/chunk_design.py --tests steps --tokens 4096

Every row is forward+backward of `ops.chunked.chunked_attention("lasad", ...)` (gradients
for q, k, v and both decays; 8 heads, Dk = Dv = 64, float32, a square grid), its time and
XLA's memory figure for the compiled program, one option changed at a time from the
platform's defaults (`ops.chunked.defaults`). The rows of one length are compiled first
and then timed in `--rounds` interleaved rounds (each a median of two runs); a row reports
its best round, so a comparison is between programs timed side by side on a shared machine:

1. `steps`: chunks per step, 1 (a `lax.scan` over chunks), 2, 4 and all (0: every chunk's
   matmuls batched together, only the state pass loops);
2. `state_pass`: the scan of elementwise updates against the lower-triangular
   decay-matrix product, with all chunks at once, for 256- and 1024-token chunks;
3. `remat`: what the backward keeps of each step (`none`, `states`, `inputs`);
4. `smoothing`: the column smoothing `H(c) = sum_c' b^|c-c'| A(c')` of a
   `[1, 8, w, 64, 64]` state, the `w x w` Toeplitz matmul the library uses against two
   scan-style forms with O(1) work per entry (`lax.associative_scan`, and a sequential
   `lax.scan` over columns), defined here only for the comparison.

Prints each row as it is measured and writes JSON to `--out` (rewritten per row).
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
from lasad_jax.ops import chunked  # noqa: E402
from lasad_jax.ops.decay import smooth_columns  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402
from op_scaling import compiled_bytes  # noqa: E402

TESTS = ("steps", "state_pass", "remat", "smoothing")


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


def form_rows(tokens: int, heads: int, dim: int, tests: list[str]) -> list[dict]:
    """(test, options) of the chunked-form rows at one length."""
    base = chunked.defaults()
    out = []
    if "steps" in tests:
        out += [("steps", dict(chunks_per_step=s)) for s in (1, 2, 4, 0)]
    if "state_pass" in tests:
        out += [("state_pass", dict(chunk_size=c, chunks_per_step=0, state_pass=p))
                for c in (256, 1024) for p in chunked.STATE_PASSES]
    if "remat" in tests:
        out += [("remat", dict(remat=r)) for r in chunked.REMAT_POLICIES]
    return [(t, dict(dict(chunk_size=base.chunk_size, chunks_per_step=base.chunks_per_step,
                          state_pass=chunked.DEFAULT_STATE_PASS,
                          remat=chunked.DEFAULT_REMAT), **o)) for t, o in out]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tests", nargs="+", default=list(TESTS), choices=TESTS)
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384],
                   help="square-grid lengths for the chunked-form rows")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128],
                   help="grid widths for the smoothing comparison")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds of the chunked-form rows")
    p.add_argument("--min_seconds", type=float, default=1.0, help="smoothing rows")
    p.add_argument("--out", default="benchmarks/results/chunk_design_cpu.json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    heads, dim = args.heads, args.dim
    info = run_info(heads=heads, dim=dim, defaults=chunked.defaults()._asdict())
    rows = []

    def save(row):
        rows.append(row)
        write_json(args.out, dict(info=info, rows=rows), quiet=True)

    row_decay = jnp.linspace(0.5, 0.99, heads)
    col_decay = jnp.linspace(0.6, 0.95, heads)
    for tokens in args.tokens:
        width = math.isqrt(tokens)
        q, k, v = (jnp.asarray(rng.normal(size=(1, tokens, heads, dim)) / 8, jnp.float32)
                   for _ in range(3))
        args_ = (q, k, v, row_decay, col_decay)
        programs = []
        for test, opts in form_rows(tokens, heads, dim, args.tests):
            def loss(q, k, v, row, col, opts=opts):
                # The output as its own cotangent (op_scaling.programs says why).
                o = chunked.chunked_attention("lasad", q, k, v, width=width, num_prefix=0,
                                              log_row=jnp.log(row), log_col=jnp.log(col),
                                              **opts)
                return 0.5 * jnp.sum(o * o)

            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
            programs.append((test, opts, fn.lower(*args_).compile()))
        # Interleaved rounds: on a shared machine the load drifts, and a comparison is only
        # fair between programs timed side by side. Each round times every program once
        # (median of a few runs); the row reports the best round and all of them.
        times = [[] for _ in programs]
        for _ in range(args.rounds):
            for i, (_, _, compiled) in enumerate(programs):
                times[i].append(median_ms(compiled, *args_, repeats=2, min_seconds=0.0))
        for (test, opts, compiled), ms in zip(programs, times):
            nbytes = compiled_bytes(compiled)
            save(dict(test=test, tokens=tokens, fwd_bwd_ms=min(ms), rounds_ms=ms, bytes=nbytes,
                      **opts))
            print(f"{test:10s} T={tokens:<6} {opts}  fwd+bwd {min(ms):9.1f} ms (rounds "
                  f"{', '.join(f'{x:.0f}' for x in ms)})  {(nbytes or 0) / 2**20:8.0f} MiB",
                  flush=True)

    if "smoothing" in args.tests:
        for width in args.widths:
            a = jnp.asarray(rng.normal(size=(1, heads, width, dim, dim)), jnp.float32)
            log_b = jnp.log(col_decay)
            forms = {"toeplitz (library)": smooth_columns, "associative_scan": smooth_assoc,
                     "sequential scan": smooth_sequential}
            want = np.asarray(smooth_columns(a, log_b))
            for name, fn in forms.items():
                got = np.asarray(jax.jit(fn)(a, log_b))
                err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
                fwd = median_ms(jax.jit(fn), a, log_b, min_seconds=args.min_seconds)
                grad = jax.jit(jax.grad(lambda a, lb, fn=fn: (fn(a, lb) * a).sum(),
                                        argnums=(0, 1)))
                bwd = median_ms(grad, a, log_b, min_seconds=args.min_seconds)
                save(dict(test="smoothing", width=width, form=name, fwd_ms=fwd,
                          fwd_bwd_ms=bwd, rel_err_vs_toeplitz=err))
                print(f"smoothing  w={width:<4} {name:<20} fwd {fwd:8.2f} ms  fwd+bwd "
                      f"{bwd:8.2f} ms  rel.err {err:.1e}", flush=True)

    write_json(args.out, dict(info=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()
