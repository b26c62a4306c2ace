"""Time per decoded token and state size of the recurrent decoding forms, by grid width.

    python benchmarks/decode_step.py             # ~1 min on a 2-core CPU
    python benchmarks/decode_step.py --variants lasad --widths 16 32 64 --rows 4 16 \
        --state_dtypes float32 bfloat16

Each variant decodes one prefix slot and `--rows` grid rows, token by token, inside one
jitted `lax.scan` (batch 4, 8 heads, Dk = Dv = 64, float32 inputs), and reports the mean
time per token and the state's size per layer, next to the KV cache that softmax attention
would hold at the end of a full square image of the same width. Several `--rows` show
whether the time per token depends on how far into the image the token is (it should not).

`--state_dtypes float32 bfloat16` also runs each variant with its state stored in
bfloat16 and reports the largest error of its outputs against the float32-state run,
relative to the largest output: the measurement behind the state dtype advice in
docs/decoding.md. Prints a table and writes JSON to `--out`, rewritten after every row.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402


def decoder(variant: str, batch: int, heads: int, dim: int, width: int,
            state_dtype=jnp.float32):
    row, col = jnp.full((heads,), 0.9), jnp.full((heads,), 0.8)
    if variant == "lasad":
        init = partial(ops.lasad_decode_init, batch, heads, dim, dim, width, state_dtype)
        step = partial(ops.lasad_decode_step, row_decay=row, col_decay=col, num_prefix=1)
    elif variant == "lasad_row":
        init = partial(ops.lasad_row_decode_init, batch, heads, dim, dim, width, state_dtype)
        step = partial(ops.lasad_row_decode_step, row_decay=row, col_decay=col, num_prefix=1)
    elif variant == "linear_1d":
        init = partial(ops.linear_1d_decode_init, batch, heads, dim, dim, state_dtype)
        step = partial(ops.linear_1d_decode_step, decay=col, num_prefix=1)
    else:
        init = partial(ops.linear_decode_init, batch, heads, dim, dim, state_dtype)
        step = partial(ops.linear_decode_step, num_prefix=1)

    @jax.jit
    def run(q, k, v):
        def body(s, x):
            o, s = step(s, *x)
            return s, o

        # The empty state is built inside the program: made outside, it would be captured
        # as a constant (gigabytes at batch 64) and copied into every compile.
        return jax.lax.scan(body, init(), (q, k, v))[1]

    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(init)))
    return run, state_bytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--rows", type=int, nargs="+", default=[8])
    p.add_argument("--batch", type=int, nargs="+", default=[4])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--variants", nargs="+", default=list(ops.VARIANTS), choices=ops.VARIANTS)
    p.add_argument("--state_dtypes", nargs="+", default=["float32"],
                   choices=("float32", "bfloat16"))
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results/decode_step_cpu.json")
    args = p.parse_args(argv)
    dtypes = ["float32"] + [d for d in args.state_dtypes if d != "float32"]

    info = run_info(batch=args.batch, heads=args.heads, dim=args.dim, rows=args.rows)
    rows = []

    def save(complete: bool = False) -> None:
        # Rewritten after every row: a run stopped at a time limit keeps what it measured.
        write_json(args.out, dict(info=info, complete=complete, rows=rows), quiet=not complete)

    print(f"{'variant':<10} {'state':<9} {'batch':>5} {'width':>5} {'rows':>4} {'us/token':>9} "
          f"{'state MiB':>10} {'KV cache MiB':>13} {'err vs f32':>10}")
    for batch in args.batch:
        for width in args.widths:
            for grid_rows in args.rows:
                tokens = 1 + grid_rows * width
                rng = np.random.default_rng(0)
                shape = (tokens, batch, args.heads, args.dim)
                q, k, v = (jnp.asarray(rng.normal(size=shape) / 8, jnp.float32)
                           for _ in range(3))
                # softmax's cache for a full square image of this width (keys and values).
                kv_cache = 2 * (1 + width * width) * batch * args.heads * args.dim * 4
                for variant in args.variants:
                    reference = None
                    for dtype in dtypes:
                        run, state_bytes = decoder(variant, batch, args.heads, args.dim, width,
                                                   jnp.dtype(dtype))
                        out = np.asarray(run(q, k, v), np.float64)
                        if reference is None:
                            reference = out
                        err = float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
                        us = 1e3 * median_ms(run, q, k, v, min_seconds=args.min_seconds) / tokens
                        rows.append(dict(variant=variant, state_dtype=dtype, batch=batch,
                                         width=width, rows=grid_rows, us_per_token=us,
                                         state_bytes=state_bytes,
                                         kv_cache_bytes_square_image=kv_cache,
                                         err_vs_float32_state=err))
                        save()
                        print(f"{variant:<10} {dtype:<9} {batch:>5} {width:>5} {grid_rows:>4} "
                              f"{us:9.1f} {state_bytes / 2**20:10.2f} "
                              f"{kv_cache / 2**20:13.2f} {err:10.1e}", flush=True)

    save(complete=True)


if __name__ == "__main__":
    main()
