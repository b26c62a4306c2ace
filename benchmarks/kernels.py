"""LASAD against flash attention on an accelerator: ms, TFLOP/s, share of peak and of HBM
bandwidth, every LASAD row checked before it is timed.

    python benchmarks/kernels.py                          # the whole table (GPU; long)
    python benchmarks/kernels.py --batch 1 --dims 64 --ops lasad_chunked softmax
    python benchmarks/kernels.py --smoke                  # CPU: tiny sizes, checks the script

Shapes: bf16 inputs, `--heads` heads (16), a square grid (width = sqrt(T)), T in
`--tokens`, Dk = Dv in `--dims`, batch in `--batch`. Operators:
- `lasad_chunked`: the chunkwise-parallel XLA form (`ops.chunked.chunked_attention`, what
  `impl="chunked"` runs), for each `--chunk_sizes` x `--remats` x `--state_passes`
  (default: the library's defaults), so one run can sweep its design choices;
- `lasad_pallas`: `impl="pallas"` (`ops.pallas.lasad_pallas`), for each `--chunk_sizes`
  (or `--pallas_chunk_sizes`) x `--state_dtypes` (storage of its column states;
  default: the library's, bf16 for these bf16 inputs, `ops.pallas.chunked.state_storage`);
- `softmax`: `jax.nn.dot_product_attention(is_causal=True, implementation=...)`, cuDNN's
  flash attention on NVIDIA GPUs (`--softmax_impl cudnn`), XLA elsewhere.

Checks: before a LASAD row is timed, its outputs (forward) or its loss and five gradients
(forward+backward) are compared with the quadratic reference form in float32 on the same
bf16 inputs (T <= `--check_tokens`), or, beyond that, with the chunked form in float32 at
twice the default chunk (an exact identity, tested against the reference at small sizes):
the largest difference over the largest magnitude, per output. A row above `CHECK_TOL`
reads "mismatch" and is not timed: a wrong kernel's speed means nothing.

FLOPs are counted the flash-attention way for every operator, so the TFLOP/s column
compares work done per second on the same problem: causal attention costs
`2 * B * H * T^2 * (Dk + Dv) / 2` forward, and 2.5 times that again for the backward
(3.5 times in all for forward+backward). Bytes are one read of q, k, v and one write of o
(forward; three times that with the backward), against the device's HBM bandwidth;
`xla_bytes_accessed` is XLA's cost-model count for the compiled program (`compiled_cost`),
the traffic the XLA forms really cause; `mem` is XLA's memory figure for the program.
Peaks come from `PEAKS` by device kind; an unknown device leaves the share columns empty
rather than guessing. `--profile_tokens T ...`: the LASAD forward+backward rows at those T
run once more under JAX's profiler once every row has been timed (a time limit cuts
profiles, not rows), and keep the kernels their time went to
(`benchmarks/device_profile.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax.ops import chunked  # noqa: E402
from lasad_jax.ops.reference import masked_attention  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402
from device_profile import format_profile, profile_call  # noqa: E402
from op_scaling import compiled_bytes, programs  # noqa: E402

# Dense bf16 tensor-core peak (TFLOP/s) and HBM bandwidth (TB/s), vendor figures.
# (dense bf16 TFLOP/s, HBM TB/s) by JAX's device_kind, matched whole: the PCIe and NVL
# variants ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", ...) have lower peaks, and a prefix
# would give them the SXM ones.
PEAKS = {
    "NVIDIA H100 80GB HBM3": (989.0, 3.35),  # SXM5
    "NVIDIA H200": (989.0, 4.8),  # SXM, as the H200 of 2026-12-04 reported itself
}
OPS = ("lasad_chunked", "lasad_pallas", "softmax")
# Issue 18's targets: LASAD forward+backward time over cuDNN flash attention's, by T, at
# batch 1, 16 heads, D = 64 (no more than 1.2x slower at 256, as fast at 1024, twice as
# fast at 4096, five times at 16384). benchmarks/report.py applies them.
TARGETS = {256: 1.2, 1024: 1.0, 4096: 0.5, 16384: 0.2}
TARGET_SHAPE = dict(batch=1, dim=64)
# Largest difference (over the largest magnitude, per output and gradient) of a bf16 LASAD
# row from the float32 check, for the row to count. The bf16 forms round scores, decayed
# keys and outputs to bf16 (2^-9 relative each); measured on CPU (benchmarks/numerics.py,
# 2026-12-04): at most 3.0e-3 (outputs) and 7.9e-3 (gradients) up to T = 4097, all
# variants. The bound leaves room for longer sums at T = 16384.
CHECK_TOL = 3e-2


def device_peaks() -> tuple[float | None, float | None]:
    """The peaks of the device JAX runs on (`PEAKS`; None, None for another)."""
    return PEAKS.get(getattr(jax.devices()[0], "device_kind", ""), (None, None))


def make_inputs(batch: int, tokens: int, heads: int, dim: int, dtype):
    rng = np.random.default_rng(0)
    # Scaled so that outputs stay O(1) for every operator and T.
    shape = (batch, tokens, heads, dim)
    q, k, v = (jnp.asarray(rng.normal(size=shape) / math.sqrt(dim), dtype) for _ in range(3))
    row = jnp.linspace(0.5, 0.99, heads).astype(jnp.float32)
    col = jnp.linspace(0.6, 0.95, heads).astype(jnp.float32)
    return q, k, v, row, col


def lasad_fn(name: str, width: int, chunk_size: int, remat: str, state_pass: str,
             state_dtype: str | None = None):
    """`f(q, k, v, row_decay, col_decay)` of a LASAD form, output in q's dtype.
    `state_dtype`: the Pallas split's state storage (`None`: the library's choice)."""
    if name == "lasad_pallas":
        from lasad_jax.ops.pallas import pallas_attention

        return lambda q, k, v, row, col: pallas_attention(
            q, k, v, width=width, num_prefix=0, log_row=jnp.log(row), log_col=jnp.log(col),
            chunk_size=chunk_size, state_dtype=state_dtype)
    return lambda q, k, v, row, col: chunked.chunked_attention(
        "lasad", q, k, v, width=width, num_prefix=0, log_row=jnp.log(row),
        log_col=jnp.log(col), chunk_size=chunk_size, remat=remat,
        state_pass=state_pass).astype(q.dtype)


def softmax_fn(impl: str | None):
    return lambda q, k, v, row, col: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=impl)


def check_fn(width: int, tokens: int, check_tokens: int):
    """The float32 form a row is checked against, and its name. Its matmuls run at the
    highest precision: a GPU's default runs float32 dots in TF32, whose own error would
    join the checked kernel's."""
    def highest(fn):
        def run(*args):
            with jax.default_matmul_precision("highest"):
                return fn(*args)
        return run

    if tokens <= check_tokens:
        return highest(lambda q, k, v, row, col: masked_attention(
            "lasad", q, k, v, width=width, num_prefix=0, log_row=jnp.log(row),
            log_col=jnp.log(col))), "reference"
    c = 2 * chunked.defaults().chunk_size
    return highest(lambda q, k, v, row, col: chunked.chunked_attention(
        "lasad", q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
        width=width, num_prefix=0, log_row=jnp.log(row), log_col=jnp.log(col),
        chunk_size=c)), f"chunked float32, C={c}"


def attention_flops(tokens: int, heads: int, dim: int, mode: str, batch: int = 1) -> float:
    fwd = 2.0 * batch * heads * tokens * tokens * (2 * dim) / 2
    return fwd if mode == "fwd" else 3.5 * fwd


def io_bytes(tokens: int, heads: int, dim: int, mode: str, batch: int = 1) -> float:
    once = 4.0 * batch * tokens * heads * dim * 2  # q, k, v read, o written, bf16
    return once if mode == "fwd" else 3 * once


def compiled_cost(compiled) -> tuple[float | None, float | None]:
    """XLA's own count of a compiled program's flops and bytes accessed, for where the time
    goes: bytes over time against the HBM bandwidth says how memory-bound a row is. It is
    XLA's cost model, not a profile: it may count a loop's body once, and it does not look
    inside custom calls (Pallas kernels, cuDNN)."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost.get("flops"), cost.get("bytes accessed")
    except Exception:  # some backends do not report
        return None, None


def max_rel_diff(got, want) -> float:
    """Largest |got - want| over each leaf's largest |want|, the worst leaf."""
    errs = []
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        errs.append(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)))
    return max(errs)


def variants(args) -> list[tuple[str, str, dict]]:
    """(op, label, options) for every operator and design choice to time."""
    out = []
    for op in sorted(args.ops, key=OPS.index):
        if op == "softmax":
            out.append((op, args.softmax_impl, {}))
            continue
        chunks = (args.pallas_chunk_sizes or args.chunk_sizes if op == "lasad_pallas"
                  else args.chunk_sizes)
        for c in chunks:
            for remat in (args.remats if op == "lasad_chunked" else [None]):
                for sp in (args.state_passes if op == "lasad_chunked" else [None]):
                    for sd in (args.state_dtypes if op == "lasad_pallas" else ["default"]):
                        sd = None if sd == "default" else sd
                        opts = dict(chunk_size=c or chunked.defaults().chunk_size,
                                    remat=remat or chunked.DEFAULT_REMAT,
                                    state_pass=sp or chunked.DEFAULT_STATE_PASS,
                                    state_dtype=sd)
                        label = f"C={opts['chunk_size']}"
                        if op == "lasad_chunked":
                            label += f" remat={opts['remat']} pass={opts['state_pass']}"
                        if sd:
                            label += f" states={sd}"
                        out.append((op, label, opts))
    return out


def shapes_of(args) -> list[tuple[int, int]]:
    """The (batch, dim) pairs to run: `--shapes`, or every `--batch` x `--dims`."""
    if args.shapes:
        return [tuple(int(x) for x in s.split(":")) for s in args.shapes]
    return [(b, d) for b in args.batch for d in args.dims]


def run(args, save=None) -> list[dict]:
    """Compile, check and time every (batch, dim, T, op, mode); `save(rows)` after each."""
    peak_flops, peak_bw = device_peaks()
    softmax_impl = None if args.softmax_impl == "xla_default" else args.softmax_impl
    rows = []
    profiles = []  # (row, tag, compiled, inputs) to run under the profiler at the end
    for batch, dim in shapes_of(args):
        for tokens in args.tokens:
            width = int(round(math.sqrt(tokens)))
            inputs = make_inputs(batch, tokens, args.heads, dim, jnp.bfloat16)
            checks = {}  # mode -> (results, name): computed once, on the first LASAD row
            layouts = {}  # (op, rows per chunk, remat, pass) -> the label that timed it
            for op, label, opts in variants(args):
                if op != "softmax":
                    # Chunk sizes that cut this grid alike run the same program: time once.
                    grid_rows = chunked.chunk_layout("lasad", width, opts["chunk_size"],
                                                     tokens).groups
                    key = (op, grid_rows, opts["remat"], opts["state_pass"],
                           opts["state_dtype"])
                    if key in layouts:
                        print(f"{op:13s} {label:30s} T={tokens:<6d} same chunks as "
                              f"{layouts[key]}: not timed again", flush=True)
                        continue
                    layouts[key] = label
                fn = softmax_fn(softmax_impl) if op == "softmax" else lasad_fn(
                    op, width, **opts)
                progs = programs(fn)
                for mode in args.modes:  # in the order asked: the important mode first
                    if (op == "softmax" and args.softmax_keys is not None
                            and (batch, dim, tokens, mode) not in args.softmax_keys):
                        continue  # the --baseline has this row
                    prog = progs[mode]
                    row = dict(op=op, variant=label, batch=batch, dim=dim, tokens=tokens,
                               mode=mode, **opts)
                    tag = f"{op:13s} {label:30s} B={batch} D={dim:<4d} T={tokens:<6d} {mode:8s}"
                    # Said before the compile: a row that never finishes still shows.
                    print(f"{tag} compiling ({time.strftime('%H:%M:%S')})", flush=True)
                    try:
                        compiled = prog.lower(*inputs).compile()
                        status = "ok"
                        if op != "softmax":
                            if mode not in checks:
                                ref_fn, name = check_fn(width, tokens, args.check_tokens)
                                checks[mode] = (programs(ref_fn)[mode](*inputs), name)
                            want, name = checks[mode]
                            err = max_rel_diff(compiled(*inputs), want)
                            row.update(err=err, check=name)
                            if not err <= CHECK_TOL:
                                # Not timed: a wrong kernel's speed decides nothing, and
                                # device time is scarce.
                                row.update(status=f"mismatch: {err:.2e} from the {name} form")
                                print(f"{tag} {row['status']}", flush=True)
                                rows.append(row)
                                if save:
                                    save(rows)
                                continue
                        ms = median_ms(compiled, *inputs, repeats=args.repeats,
                                       min_seconds=args.min_seconds)
                    except Exception as e:  # no Pallas path or cuDNN here, out of memory
                        row.update(status=f"unavailable: {type(e).__name__}: {str(e)[:160]}")
                        traceback.print_exc(limit=-6)  # what a fix starts from
                        print(f"{tag} {row['status']}", flush=True)
                        rows.append(row)
                        if save:
                            save(rows)
                        continue
                    flops = attention_flops(tokens, args.heads, dim, mode, batch)
                    tflops = flops / (ms * 1e-3) / 1e12
                    tbps = io_bytes(tokens, args.heads, dim, mode, batch) / (ms * 1e-3) / 1e12
                    row.update(status=status, ms=ms, tflops=tflops, tb_per_s=tbps,
                               peak_share=tflops / peak_flops if peak_flops else None,
                               bandwidth_share=tbps / peak_bw if peak_bw else None,
                               bytes=compiled_bytes(compiled))
                    xla_flops, moved = compiled_cost(compiled)
                    row.update(xla_flops=xla_flops, xla_bytes_accessed=moved,
                               xla_bandwidth_share=(moved / (ms * 1e-3) / 1e12 / peak_bw
                                                    if moved and peak_bw else None))
                    rows.append(row)
                    check = f"  diff {row['err']:.1e} vs {row['check']}" if "err" in row else ""
                    print(f"{tag} {ms:9.3f} ms {tflops:7.1f} TFLOP/s{check}", flush=True)
                    if save:
                        save(rows)
                    if op != "softmax" and mode == "fwd_bwd" and tokens in args.profile_tokens:
                        # Profiled after every row is timed: a time limit then cuts
                        # profiles, never the rows a target is read from (the cuDNN row
                        # at this T comes after this one).
                        profiles.append((row, tag, compiled, inputs))
            del checks  # free the device before the next shape's inputs
    for row, tag, compiled, inputs in profiles:
        print(f"{tag} profiling", flush=True)
        row["profile"] = profile_call(lambda: compiled(*inputs), compiled.as_text())
        print("\n".join(format_profile(row["profile"])), flush=True)
        if save:
            save(rows)
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Softmax time / LASAD time per (batch, dim, T, mode), for each LASAD variant."""
    ok = {(r["op"], r["variant"], r["batch"], r["dim"], r["tokens"], r["mode"]): r["ms"]
          for r in rows if r.get("status") == "ok"}
    soft = {(b, d, t, m): ms for (op, _, b, d, t, m), ms in ok.items() if op == "softmax"}
    out = []
    for (op, label, b, d, t, m), ms in sorted(ok.items()):
        ref = soft.get((b, d, t, m))
        if op != "softmax" and ref:
            out.append(dict(op=op, variant=label, batch=b, dim=d, tokens=t, mode=m,
                            speedup=ref / ms))
    return out


def print_table(rows: list[dict], ratios: list[dict]) -> None:
    print("\n| op | variant | B | D | T | mode | ms | TFLOP/s | % bf16 peak | % HBM BW "
          "| XLA GB moved (% BW) | MiB | diff vs check |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    def share(x: float | None) -> str:
        return f"{100 * x:.1f}" if x is not None else "-"

    for r in rows:
        head = (f"| {r['op']} | {r['variant']} | {r['batch']} | {r['dim']} | {r['tokens']} | "
                f"{r['mode']} |")
        if "ms" not in r:
            print(f"{head} {r['status'].split(':')[0]} | | | | | | |")
            continue
        diff = f"{r['err']:.1e}" if "err" in r else ""
        ms = f"{r['ms']:.3f}"
        mem = f"{r['bytes'] / 2**20:,.0f}" if r.get("bytes") else "?"
        moved = (f"{r['xla_bytes_accessed'] / 1e9:.2f} ({share(r['xla_bandwidth_share'])})"
                 if r.get("xla_bytes_accessed") else "?")
        print(f"{head} {ms} | {r['tflops']:.1f} | {share(r['peak_share'])} | "
              f"{share(r['bandwidth_share'])} | {moved} | {mem} | {diff} |")
    if ratios:
        print("\n| op | variant | B | D | T | mode | speedup over softmax |")
        print("|---|---|---:|---:|---:|---|---:|")
        for r in ratios:
            print(f"| {r['op']} | {r['variant']} | {r['batch']} | {r['dim']} | {r['tokens']} "
                  f"| {r['mode']} | {r['speedup']:.2f}x |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, XLA softmax, one repeat: checks the script (CPU)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--shapes", nargs="+", default=None,
                        help="batch:dim pairs, instead of every --batch x --dims")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"],
                        choices=["fwd", "fwd_bwd"])
    parser.add_argument("--chunk_sizes", type=int, nargs="+", default=[0],
                        help="tokens per chunk of the LASAD forms (0: the default)")
    parser.add_argument("--pallas_chunk_sizes", type=int, nargs="+", default=None,
                        help="lasad_pallas only (default: --chunk_sizes): a sweep of the XLA "
                             "form's chunks can give the Pallas rows the chunks another "
                             "run timed them at, so that rows compare")
    parser.add_argument("--remats", nargs="+", default=[chunked.DEFAULT_REMAT],
                        choices=chunked.REMAT_POLICIES)
    parser.add_argument("--state_passes", nargs="+", default=[chunked.DEFAULT_STATE_PASS],
                        choices=chunked.STATE_PASSES)
    parser.add_argument("--state_dtypes", nargs="+", default=["default"],
                        choices=["default", "float32", "bfloat16"],
                        help="lasad_pallas: storage of the column states (default: the "
                             "library's choice for bf16 inputs)")
    parser.add_argument("--check_tokens", type=int, default=4096,
                        help="longest T checked against the quadratic reference")
    parser.add_argument("--softmax_impl", default="cudnn", choices=("cudnn", "xla",
                                                                   "xla_default"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--min_seconds", type=float, default=1.0)
    parser.add_argument("--profile_tokens", type=int, nargs="*", default=[],
                        help="LASAD forward+backward rows at these T also run once under "
                             "JAX's profiler: where the time goes (benchmarks/device_profile.py)")
    parser.add_argument("--baseline", default=None,
                        help="JSON of an earlier run whose softmax rows join this run's "
                             "table and speedups")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      f"kernels_{jax.default_backend()}.json"))
    args = parser.parse_args(argv)
    if args.smoke:  # tiny defaults; flags given explicitly still win
        parser.set_defaults(tokens=[16, 64], dims=[8], batch=[1], heads=2,
                            softmax_impl="xla", repeats=1, min_seconds=0.0, chunk_sizes=[16])
        args = parser.parse_args(argv)
    for t in args.tokens:
        if int(round(math.sqrt(t))) ** 2 != t:
            raise SystemExit(f"--tokens must be perfect squares (square grids), got {t}")
    stray = sorted(set(args.profile_tokens) - set(args.tokens))
    if stray:
        raise SystemExit(f"--profile_tokens {stray} are not among --tokens {args.tokens}: "
                         "no row would be profiled there")
    info = run_info(heads=args.heads, dtype="bfloat16", softmax_impl=args.softmax_impl,
                    check_tol=CHECK_TOL, check_tokens=args.check_tokens)

    baseline = []
    if args.baseline:
        try:
            with open(args.baseline) as f:
                baseline = [dict(r, source=args.baseline, batch=r.get("batch", 1),
                                 variant=r.get("variant", args.softmax_impl))
                            for r in json.load(f)["rows"] if r["op"] == "softmax"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--baseline {args.baseline}: not a kernels.py result JSON "
                             f"({type(e).__name__}: {e})") from e

    args.softmax_keys = None  # every softmax row of --ops
    if args.baseline and "softmax" not in args.ops:
        # The baseline's run may have been cut by its time limit: the lengths it lacks
        # get their softmax rows here, so every LASAD row has its comparison.
        have = {(r["batch"], r["dim"], r["tokens"], r["mode"]) for r in baseline
                if r.get("status") == "ok"}
        need = {(b, d, t, m) for b, d in shapes_of(args) for t in args.tokens
                for m in args.modes}
        if need - have:
            args.ops = [*args.ops, "softmax"]
            args.softmax_keys = need - have
            print(f"--baseline lacks {len(need - have)} softmax row(s): timed here",
                  flush=True)

    def result(rows: list[dict], complete: bool) -> dict:
        rows = baseline + rows
        return {"info": info, "complete": complete, "rows": rows, "speedups": speedups(rows)}

    # Rewritten after every row, so a run stopped at a time limit keeps what it measured.
    rows = run(args, save=lambda rows: write_json(args.out, result(rows, False), quiet=True))
    final = result(rows, True)
    print_table(final["rows"], final["speedups"])
    write_json(args.out, final)
    return final


if __name__ == "__main__":
    main()
