"""Forward and forward+backward time and memory of the attention operators against T.

    python benchmarks/op_scaling.py                       # the README table (CPU: ~5 min)
    python benchmarks/op_scaling.py --tokens 1024 4096 --chunk_sizes 256 512 1024

Operators: LASAD chunked (`impl="chunked"`), LASAD reference (the quadratic masked form)
and causal softmax attention (`jax.nn.dot_product_attention`, XLA or cuDNN). Shapes: batch
1, 8 heads, Dk = Dv = 64, a square grid (width = sqrt(T)), float32 unless `--dtype`.

Memory is XLA's own figure for the compiled program (arguments + outputs + temporaries,
from `Compiled.memory_analysis()`): the peak the program can reach, independent of
allocator caching. Programs whose figure exceeds `--memory_budget_gb` are compiled but not
run, and reported as such. Every program is compiled first, then all are timed in
`--rounds` interleaved rounds (each the median of at least `--repeats` runs and
`--min_seconds`, after two warm-ups); a row reports its best round, so rows of different
lengths were timed side by side even on a shared machine.
Prints a table and writes JSON (and the device and date) to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax import ops  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402


def make_inputs(tokens: int, heads: int, dim: int, dtype):
    rng = np.random.default_rng(0)
    # Scaled so that outputs stay O(1) for every operator and T.
    scale = 1.0 / math.sqrt(dim)
    q, k, v = (jnp.asarray(rng.normal(size=(1, tokens, heads, dim)) * scale, dtype)
               for _ in range(3))
    row = jnp.linspace(0.5, 0.99, heads).astype(jnp.float32)
    col = jnp.linspace(0.6, 0.95, heads).astype(jnp.float32)
    return q, k, v, row, col


def operator(name: str, width: int, chunk_size: int | None) -> Callable:
    if name == "softmax":
        return lambda q, k, v, row, col: jax.nn.dot_product_attention(q, k, v, is_causal=True)
    impl = "chunked" if name.startswith("lasad_chunked") else "reference"
    return lambda q, k, v, row, col: ops.lasad_attention(
        q, k, v, width=width, row_decay=row, col_decay=col, impl=impl, chunk_size=chunk_size
    )


def programs(fn: Callable):
    def fwd(q, k, v, row, col):
        return fn(q, k, v, row, col)

    def loss(q, k, v, row, col):
        # Half the sum of squares: the output's cotangent is the output itself, data as in
        # training. With a plain sum it would be all ones, and XLA simplifies the products
        # with a broadcast of ones in the backward (measured: 28% fewer bytes accessed for
        # the chunked form at T = 16384), a shortcut no training step gets and a custom
        # call (cuDNN, Pallas) cannot take.
        o = fn(q, k, v, row, col).astype(jnp.float32)
        return 0.5 * jnp.sum(o * o)

    # Gradients for q, k, v and (LASAD) the decays, as in training.
    fwd_bwd = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))
    return {"fwd": jax.jit(fwd), "fwd_bwd": jax.jit(fwd_bwd)}


def compiled_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # some backends do not report
        return None


def run(args) -> list[dict]:
    """Compiles every (T, op, mode) program, then times them all in `args.rounds`
    interleaved rounds: on a shared machine the load drifts over minutes, and a ratio
    between lengths (the linearity check) is only fair between programs timed side by
    side. A row reports its best round (`ms`) and every round (`rounds_ms`)."""
    dtype = jnp.dtype(args.dtype)
    rows, runs = [], []
    for tokens in args.tokens:
        width = int(round(math.sqrt(tokens)))
        if width * width != tokens:
            raise SystemExit(f"--tokens must be perfect squares (square grids), got {tokens}")
        inputs = make_inputs(tokens, args.heads, args.dim, dtype)
        names = []
        for op in args.ops:
            if op == "lasad_chunked":
                names += [(f"lasad_chunked[{c}]" if len(args.chunk_sizes) > 1 else op, c)
                          for c in args.chunk_sizes]
            else:
                names.append((op, None))
        for name, chunk in names:
            for mode, prog in programs(operator(name, width, chunk)).items():
                compiled = prog.lower(*inputs).compile()
                nbytes = compiled_bytes(compiled)
                row = dict(op=name, mode=mode, tokens=tokens, width=width, chunk_size=chunk,
                           bytes=nbytes, ms=None, rounds_ms=[], note="")
                if nbytes is not None and nbytes > args.memory_budget_gb * 2**30:
                    row["note"] = f"not run: needs {nbytes / 2**30:.1f} GiB > budget"
                else:
                    runs.append((row, compiled, inputs))
                rows.append(row)
    for _ in range(args.rounds):
        for row, compiled, inputs in runs:
            row["rounds_ms"].append(median_ms(compiled, *inputs, repeats=args.repeats,
                                              min_seconds=args.min_seconds))
            row["ms"] = min(row["rounds_ms"])
    for row in rows:
        print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    ms = f"{r['ms']:10.2f}" if r["ms"] is not None else f"{'-':>10}"
    mem = f"{r['bytes'] / 2**20:10.1f}" if r["bytes"] is not None else f"{'?':>10}"
    return f"{r['op']:<22} {r['mode']:<8} {r['tokens']:>6} {ms} {mem}  {r['note']}"


def markdown_table(rows: list[dict]) -> str:
    """One line per operator and T, forward and forward+backward side by side."""
    by_key: dict[tuple, dict] = {}
    for r in rows:
        by_key.setdefault((r["op"], r["tokens"]), {})[r["mode"]] = r
    lines = ["| op | T | fwd ms | fwd+bwd ms | fwd+bwd MiB |", "|---|---:|---:|---:|---:|"]
    for (op, tokens), modes in by_key.items():
        cells = []
        for mode in ("fwd", "fwd_bwd"):
            r = modes.get(mode)
            cells.append("-" if r is None else
                         f"{r['ms']:.1f}" if r["ms"] is not None else "does not fit")
        mem = modes.get("fwd_bwd", {}).get("bytes")
        cells.append("?" if mem is None else f"{mem / 2**20:,.0f}")
        lines.append(f"| {op} | {tokens} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """The issue's scaling checks, computed from the rows."""
    def ms(op, mode, t):
        for r in rows:
            if (r["op"], r["mode"], r["tokens"]) == (op, mode, t):
                return r["ms"]
        return None

    out = {}
    c1, c16 = ms("lasad_chunked", "fwd_bwd", 1024), ms("lasad_chunked", "fwd_bwd", 16384)
    if c1 and c16:
        out["chunked_fwd_bwd_ratio_16384_over_1024"] = c16 / c1
    for t in sorted({r["tokens"] for r in rows}):
        c, s = ms("lasad_chunked", "fwd_bwd", t), ms("softmax", "fwd_bwd", t)
        if c:
            out[f"softmax_over_chunked_fwd_bwd_T{t}"] = (s / c) if s else "softmax not run"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--ops", nargs="+", default=["lasad_chunked", "lasad_reference", "softmax"],
                   choices=["lasad_chunked", "lasad_reference", "softmax"])
    p.add_argument("--chunk_sizes", type=int, nargs="+", default=[None],
                   help="chunk sizes for lasad_chunked (default: the operator's default)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64, help="Dk = Dv")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--repeats", type=int, default=3,
                   help="at least this many timed runs per round")
    p.add_argument("--min_seconds", type=float, default=0.3, help="and at least this long")
    p.add_argument("--memory_budget_gb", type=float, default=12.0)
    p.add_argument("--out", default="benchmarks/results/op_scaling_cpu.json")
    args = p.parse_args(argv)

    info = run_info(heads=args.heads, dim=args.dim, dtype=args.dtype, batch=1)
    print(json.dumps(info))
    print(f"{'op':<22} {'mode':<8} {'T':>6} {'ms':>10} {'MiB':>10}")
    rows = run(args)
    result = dict(info=info, rows=rows, summary=summary(rows))
    print(markdown_table(rows))
    print(json.dumps(result["summary"], indent=1))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
