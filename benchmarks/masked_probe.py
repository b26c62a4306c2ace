"""The intra-chunk Pallas kernel's tiles on a GPU, at LASADGen's training shapes.

    python benchmarks/masked_probe.py --out benchmarks/results/masked_probe_gpu.json
    python benchmarks/masked_probe.py --smoke --out /tmp/probe.json     # checks the script

Why: `ops.pallas.masked.default_tiles` (64-token tiles, 4 warps, 2 pipeline stages for
bf16) was chosen on an H200 for the kernel as it was on 2026-12-04, forward only; the
kernels now multiply bf16 tiles directly and the backward runs two more of them. At 256
and 512 px the image is one chunk, so this kernel is the whole operator of a training
step (`impl="pallas"`): its tiles decide how LASAD's step compares with softmax's.

For each shape (`--shapes B:T`, default the training steps of `benchmarks/train_step.py`:
batch 64 at 256 tokens and batch 16 at 1024, one class slot, square grids, 16 heads,
D = 64, bf16) and each tile setting (`--tiles BQ:BK:WARPS:STAGES`, default first), it
times forward+backward of `masked.intra_attention` (gradients of q, k, v and both log
decays, as in training), after checking its output and those five gradients against the
chunked XLA form. A
setting that Triton refuses (shared memory, registers) is recorded as unavailable.
Settings run one after another, each at every shape, so a time limit cuts whole settings
(`benchmarks/report.py` compares the settings that ran at every shape). On CPU
the kernels only interpret, so the timings say nothing; `--smoke` runs tiny sizes there.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from lasad_jax.ops.pallas import masked  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402
from kernels import max_rel_diff  # noqa: E402
from op_scaling import make_inputs  # noqa: E402

# The default first, then larger tiles and more warps (bf16 tensor-core tiles of flash
# attention kernels are 64-128 tokens, with 4-8 warps), then smaller ones.
TILES = ["64:64:4:2", "128:64:4:2", "128:64:8:3", "64:64:4:3", "128:128:8:2", "32:32:4:2"]
SHAPES = ["64:256", "16:1024"]
# Forward+backward outputs whose error against the XLA form a bf16 run may show (the
# H200's forward errors were 2e-4 to 6e-3 on 2026-12-04). The five gradients, each of a
# bf16 loss, get a looser bound: a tile bug (a wrong mask or a skipped block) is O(1).
MAX_ERR = 2e-2
MAX_GRAD_ERR = 5e-2


def _loss(o: jax.Array) -> jax.Array:
    o = o.astype(jnp.float32)
    return 0.5 * jnp.sum(o * o)  # the output is its own cotangent, as in training


def parse(spec: str, names: tuple[str, ...], flag: str) -> dict[str, int]:
    """`"a:b:..."` -> {name: int}; one clear line on anything else."""
    parts = spec.split(":")
    if len(parts) != len(names) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"{flag}: expected {':'.join(n.upper() for n in names)} with positive "
                         f"integers, got {spec!r}")
    return dict(zip(names, map(int, parts)))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES,
                   help="BATCH:TOKENS, TOKENS = 1 + a square grid's tokens - 1 (as trained)")
    p.add_argument("--tiles", nargs="+", default=None,
                   help=f"BLOCK_Q:BLOCK_K:WARPS:STAGES (default {' '.join(TILES)})")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--min_seconds", type=float, default=0.2)
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes and tiles (CPU: checks the script, times nothing real)")
    p.add_argument("--out", default="benchmarks/results/masked_probe.json")
    args = p.parse_args(argv)
    if args.smoke:  # tiny defaults; flags given explicitly still win
        p.set_defaults(shapes=["2:16"], heads=2, dim=8, min_seconds=0.0,
                       tiles=["16:16:4:2", "16:16:8:3"])
        args = p.parse_args(argv)
    args.tiles = args.tiles or TILES
    shapes = [parse(s, ("batch", "tokens"), "--shapes") for s in args.shapes]
    tiles = [parse(s, ("block_q", "block_k", "num_warps", "num_stages"), "--tiles")
             for s in args.tiles]
    platform = jax.default_backend()
    backend = "tpu" if platform == "tpu" else "gpu"  # CPU: the GPU kernels, interpreted
    if backend == "tpu":  # Mosaic has no warps or stages: the blocks alone
        tiles = [dict(block_q=t["block_q"], block_k=t["block_k"]) for t in tiles]
    info = run_info(heads=args.heads, dim=args.dim, dtype="bfloat16", num_prefix=1,
                    mode="fwd_bwd", kernel_backend=backend)
    rows: list[dict] = []
    cases = []  # per shape: its inputs and the chunked form's output to check against
    for shape in shapes:
        b, t = shape["batch"], shape["tokens"]
        width = math.isqrt(t)  # a class slot, then the grid's first width^2 - 1 tokens
        if width * width != t:
            raise SystemExit(f"--shapes: TOKENS must be a square (a grid's tokens fed with "
                             f"one class slot), got {t}")
        q, k, v, row, col = make_inputs(t, args.heads, args.dim, jnp.bfloat16)
        q, k, v = (jnp.tile(x, (b, 1, 1, 1)) for x in (q, k, v))

        def chunked(q, k, v, lr, lc, width=width, t=t):
            return ops.lasad_attention(q, k, v, width=width, row_decay=jnp.exp(lr),
                                       col_decay=jnp.exp(lc), num_prefix=1, impl="chunked",
                                       chunk_size=t)

        inputs = (q, k, v, jnp.log(row), jnp.log(col))
        want = jax.jit(chunked)(*inputs)
        # The tiles drive the backward kernels too: their five gradients are checked.
        want_grads = jax.jit(jax.grad(lambda *x, f=chunked: _loss(f(*x)),
                                      argnums=(0, 1, 2, 3, 4)))(*inputs)
        cases.append((b, t, width, inputs, want, want_grads))
    # Setting by setting, every shape inside: a time limit leaves whole settings, which
    # `report.fastest_tiles` compares (it needs a setting's time at every shape).
    base_ms: dict[tuple, float] = {}  # per shape, the first setting that ran: the default
    for tile in tiles:
        for b, t, width, inputs, want, want_grads in cases:
            def fwd(q, k, v, lr, lc, tile=tile, width=width):
                return masked.intra_attention(q, k, v, width=width, log_row=lr, log_col=lc,
                                              num_prefix=1, backend=backend,
                                              interpret=platform == "cpu", out_dtype=q.dtype,
                                              **tile)

            def loss(q, k, v, lr, lc, fwd=fwd):
                return _loss(fwd(q, k, v, lr, lc))

            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
            r = dict(batch=b, tokens=t, **tile)
            try:
                r["err_vs_chunked"] = max_rel_diff(jax.jit(fwd)(*inputs), want)
                _, grads = step(*inputs)  # the timed program, checked before it is timed
                r["grad_err_vs_chunked"] = max(max_rel_diff(g, w)
                                               for g, w in zip(grads, want_grads))
                r["ms"] = median_ms(step, *inputs, repeats=5, min_seconds=args.min_seconds)
                r["status"] = ("ok" if r["err_vs_chunked"] < MAX_ERR
                               and r["grad_err_vs_chunked"] < MAX_GRAD_ERR else "wrong")
            except Exception as e:  # a setting this lowering refuses
                r["status"] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
            if r["status"] == "ok":
                base_ms.setdefault((b, t), r["ms"])
                r["vs_first"] = round(base_ms[(b, t)] / r["ms"], 3)
            rows.append(r)
            write_json(args.out, dict(info=info, complete=False, rows=rows), quiet=True)
            print(r, flush=True)
    write_json(args.out, dict(info=info, complete=True, rows=rows))
    return rows


if __name__ == "__main__":
    main()
