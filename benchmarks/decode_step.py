"""Time per decoded token and state size of the recurrent decoding forms, by grid width.

    python benchmarks/decode_step.py             # ~1 min on a 2-core CPU
    python benchmarks/decode_step.py --variants lasad --impls xla pallas --batch 1 8 64 \
        --heads 16 --out benchmarks/results/decode_step_gpu.json   # XLA vs fused, on a GPU/TPU

Each variant decodes one prefix slot and 8 grid rows, token by token, inside one jitted
`lax.scan` (batch 4, 8 heads, Dk = Dv = 64, float32), and reports the mean time per token
and the state's size per layer, next to the KV cache that softmax attention would hold at
the end of the same sequence. Prints a table and writes JSON to `--out`.

`--impls xla pallas` also times `lasad` through the fused Pallas step
(`lasad_decode_step(impl="pallas")`, one kernel per token): the measurement that decides
`ops.DECODE_AUTO_TABLE`. On CPU Pallas only runs in its interpreter, which says nothing
about speed, so `pallas` rows are skipped there.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402


# float32 inputs and states, but GPUs multiply float32 matrices in TF32 by default (2^-11
# relative per product) and the two steps sum in different orders: differences stay near
# 1e-3 of the largest output. A missing decay or a wrong column is O(1). A difference over
# this stops the run: a wrong kernel is not timed.
AGREEMENT_TOL = 1e-2


def agreement(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Largest difference relative to the largest |want|; stops the run over the bound."""
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    if not err <= AGREEMENT_TOL:
        raise SystemExit(f"{what}: outputs differ from the XLA step by {err:.2e} (relative "
                         f"to the largest), over {AGREEMENT_TOL}; not timed")
    return err


def decoder(variant: str, batch: int, heads: int, dim: int, width: int, impl: str = "xla"):
    row, col = jnp.full((heads,), 0.9), jnp.full((heads,), 0.8)
    if variant == "lasad":
        init = lambda: ops.lasad_decode_init(batch, heads, dim, dim, width)
        step = lambda s, x: ops.lasad_decode_step(s, *x, row_decay=row, col_decay=col, num_prefix=1,
                                                  impl=impl)
    elif variant == "lasad_row":
        init = lambda: ops.lasad_row_decode_init(batch, heads, dim, dim, width)
        step = lambda s, x: ops.lasad_row_decode_step(s, *x, row_decay=row, col_decay=col,
                                                      num_prefix=1)
    elif variant == "linear_1d":
        init = lambda: ops.linear_1d_decode_init(batch, heads, dim, dim)
        step = lambda s, x: ops.linear_1d_decode_step(s, *x, decay=col, num_prefix=1)
    else:
        init = lambda: ops.linear_decode_init(batch, heads, dim, dim)
        step = lambda s, x: ops.linear_decode_step(s, *x, num_prefix=1)

    @jax.jit
    def run(q, k, v):
        def body(s, x):
            o, s = step(s, x)
            return s, o

        # The empty state is built inside the program: made outside, it would be captured
        # as a constant (gigabytes at batch 64) and copied into every compile.
        return jax.lax.scan(body, init(), (q, k, v))[1]

    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(init)))
    return run, state_bytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--batch", type=int, nargs="+", default=[4])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--variants", nargs="+", default=list(ops.VARIANTS), choices=ops.VARIANTS)
    p.add_argument("--impls", nargs="+", default=["xla"], choices=("xla", "pallas"),
                   help="decoding step implementations of `lasad` (the others have 'xla' only)")
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results/decode_step_cpu.json")
    args = p.parse_args(argv)
    impls = args.impls
    if "pallas" in impls and jax.default_backend() == "cpu":
        print("pallas: skipped, Pallas only interprets on CPU (run this on a GPU or TPU)")
        impls = [i for i in impls if i != "pallas"]
    if "pallas" in impls:
        impls = ["xla", "pallas"]  # the XLA step first: the fused one is checked against it

    info = run_info(batch=args.batch, heads=args.heads, dim=args.dim, rows=args.rows)
    rows = []

    def save(complete: bool = False) -> None:
        # Rewritten after every row: a run stopped at a time limit keeps what it measured.
        write_json(args.out, dict(info=info, complete=complete, rows=rows), quiet=not complete)

    print(f"{'variant':<10} {'impl':<6} {'batch':>5} {'width':>5} {'us/token':>9} "
          f"{'state MiB':>10} {'KV cache MiB':>13}")
    for batch in args.batch:
        for width in args.widths:
            tokens = 1 + args.rows * width
            rng = np.random.default_rng(0)
            shape = (tokens, batch, args.heads, args.dim)
            q, k, v = (jnp.asarray(rng.normal(size=shape) / 8, jnp.float32) for _ in range(3))
            # softmax's cache for a full square image of this width (keys and values).
            kv_cache = 2 * (1 + width * width) * batch * args.heads * args.dim * 4
            for variant in args.variants:
                xla_out = None
                for impl in impls if variant == "lasad" else ["xla"]:
                    run, state_bytes = decoder(variant, batch, args.heads, args.dim, width, impl)
                    row = dict(variant=variant, impl=impl, batch=batch, width=width)
                    tag = f"{variant:<10} {impl:<6} {batch:>5} {width:>5}"
                    check = ""
                    if impl == "xla":
                        xla_out = np.asarray(run(q, k, v))
                    else:  # the fused step must decode the same tokens before its time counts
                        try:
                            got = np.asarray(run(q, k, v))
                        except Exception as e:  # the kernel does not compile for this device
                            traceback.print_exc(limit=-8)
                            row["status"] = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
                            rows.append(row)
                            save()
                            print(f"{tag} {row['status']}", flush=True)
                            continue
                        err = agreement(got, xla_out,
                                        f"{variant} impl={impl} batch={batch} width={width}")
                        row["err_vs_xla"] = err
                        check = f"  max rel diff vs xla {err:.1e}"
                    us = 1e3 * median_ms(run, q, k, v, min_seconds=args.min_seconds) / tokens
                    row.update(us_per_token=us, state_bytes=state_bytes,
                               kv_cache_bytes_square_image=kv_cache)
                    rows.append(row)
                    save()
                    print(f"{tag} {us:9.1f} "
                          f"{state_bytes / 2**20:10.2f} {kv_cache / 2**20:13.2f}{check}",
                          flush=True)

    save(complete=True)


if __name__ == "__main__":
    main()
