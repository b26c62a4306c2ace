"""LASAD kernels against flash attention on an accelerator: ms, TFLOP/s, share of peak.

    python benchmarks/kernels.py                      # the [kernels] table (GPU; ~10 min)
    python benchmarks/kernels.py --tokens 256 1024 --dims 64 --ops lasad_chunked softmax

Shapes: batch 1, 16 heads, bf16 inputs, a square grid (width = sqrt(T)), T in `--tokens`,
Dk = Dv in `--dims`. Operators:
- `lasad_pallas`: `lasad_attention(impl="pallas")`; reported as unavailable (not timed)
  while this JAX build or this version of the package has no Pallas path for the device;
- `lasad_chunked`: `impl="chunked"` (XLA, `lax.scan` over chunks);
- `softmax`: `jax.nn.dot_product_attention(is_causal=True, implementation=...)`, cuDNN's
  flash attention on NVIDIA GPUs (`--softmax_impl cudnn`), XLA elsewhere.

FLOPs are counted the flash-attention way for every operator, so the TFLOP/s column
compares work done per second on the same problem: causal attention costs
`2 * B * H * T^2 * (Dk + Dv) / 2` forward, and 2.5 times that again for the backward
(3.5 times in all for forward+backward).
Bytes are one read of q, k, v and one write of o (forward; three times that with the
backward), against the device's HBM bandwidth. Peaks come from `PEAKS` by device kind;
an unknown device leaves the share columns empty rather than guessing.
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
from lasad_jax import ops  # noqa: E402
from common import median_ms, run_info, write_json  # noqa: E402
from op_scaling import compiled_bytes, make_inputs, programs  # noqa: E402

# Dense bf16 tensor-core peak (TFLOP/s) and HBM bandwidth (TB/s), vendor figures.
PEAKS = {
    "NVIDIA H100 80GB HBM3": (989.0, 3.35),
    "NVIDIA H100": (989.0, 3.35),
    "NVIDIA H200": (989.0, 4.8),
}
# The chunked XLA form runs first: the Pallas rows are checked against its results.
OPS = ("lasad_chunked", "lasad_pallas", "softmax")
# Largest relative difference (to the largest magnitude of each output and gradient) of the
# Pallas kernels from the chunked form, both on the same bf16 inputs, for a row to count.
# Both round their bf16 outputs once (2^-9 of the value); the margin covers the different
# f32 summation orders over up to 16,384 keys. A row beyond it reads "mismatch" and is left
# out of the speedups: a wrong kernel's speed means nothing.
AGREEMENT_TOL = 1e-2


def device_peaks() -> tuple[float | None, float | None]:
    kind = getattr(jax.devices()[0], "device_kind", "")
    for name, peaks in PEAKS.items():
        if kind.startswith(name):
            return peaks
    return None, None


def operator(name: str, width: int, softmax_impl: str | None):
    if name == "softmax":
        return lambda q, k, v, row, col: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=softmax_impl)
    impl = {"lasad_pallas": "pallas", "lasad_chunked": "chunked"}[name]
    return lambda q, k, v, row, col: ops.lasad_attention(
        q, k, v, width=width, row_decay=row, col_decay=col, impl=impl)


def attention_flops(tokens: int, heads: int, dim: int, mode: str) -> float:
    fwd = 2.0 * heads * tokens * tokens * (2 * dim) / 2
    return fwd if mode == "fwd" else 3.5 * fwd


def io_bytes(tokens: int, heads: int, dim: int, mode: str) -> float:
    once = 4.0 * tokens * heads * dim * 2  # q, k, v read, o written, bf16
    return once if mode == "fwd" else 3 * once


def max_rel_diff(got, want) -> float:
    """Largest |got - want| over each leaf's largest |want|, the worst leaf."""
    errs = []
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        errs.append(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)))
    return max(errs)


def run(args, save=None) -> list[dict]:
    """Compile, check and time each (dim, T, op, mode); `save(rows)` after every row."""
    peak_flops, peak_bw = device_peaks()
    softmax_impl = None if args.softmax_impl == "xla_default" else args.softmax_impl
    rows = []
    for dim in args.dims:
        for tokens in args.tokens:
            width = int(round(math.sqrt(tokens)))
            inputs = make_inputs(tokens, args.heads, dim, jnp.bfloat16)
            chunked_results = {}
            for name in sorted(args.ops, key=OPS.index):
                fn = operator(name, width, softmax_impl)
                for mode, prog in programs(fn).items():
                    row = dict(op=name, dim=dim, tokens=tokens, mode=mode)
                    tag = f"{name:14s} D={dim:<4d} T={tokens:<6d} {mode:8s}"
                    # Said before the compile: a row that never finishes still shows in the log.
                    print(f"{tag} compiling ({time.strftime('%H:%M:%S')})", flush=True)
                    try:
                        compiled = prog.lower(*inputs).compile()
                    except Exception as e:  # no Pallas path, or no cuDNN on this device
                        row.update(status=f"unavailable: {type(e).__name__}: {str(e)[:120]}")
                        # The whole error goes to the log: it is what a fix starts from.
                        traceback.print_exc(limit=-8)
                        rows.append(row)
                        print(f"{tag} {row['status']}")
                        if save:
                            save(rows)
                        continue
                    status = "ok"
                    if name == "lasad_chunked":
                        chunked_results[mode] = compiled(*inputs)
                    elif name == "lasad_pallas" and mode in chunked_results:
                        err = max_rel_diff(compiled(*inputs), chunked_results[mode])
                        row["err_vs_chunked"] = err
                        if not err <= AGREEMENT_TOL:
                            status = f"mismatch: {err:.2e} from the chunked form"
                            print(f"{tag} {status}")
                    ms = median_ms(compiled, *inputs, repeats=args.repeats,
                                   min_seconds=args.min_seconds)
                    tflops = attention_flops(tokens, args.heads, dim, mode) / (ms * 1e-3) / 1e12
                    tbps = io_bytes(tokens, args.heads, dim, mode) / (ms * 1e-3) / 1e12
                    row.update(status=status, ms=ms, tflops=tflops, tb_per_s=tbps,
                               peak_share=tflops / peak_flops if peak_flops else None,
                               bandwidth_share=tbps / peak_bw if peak_bw else None,
                               bytes=compiled_bytes(compiled))
                    rows.append(row)
                    check = (f"  max rel diff {row['err_vs_chunked']:.1e}"
                             if "err_vs_chunked" in row else "")
                    print(f"{tag} {ms:9.3f} ms "
                          f"{tflops:7.1f} TFLOP/s{check}", flush=True)
                    if save:
                        save(rows)
            del chunked_results  # free the device before the next T's inputs
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Softmax time / LASAD time per (dim, T, mode), for each LASAD operator."""
    ok = {(r["op"], r["dim"], r["tokens"], r["mode"]): r["ms"] for r in rows
          if r.get("status") == "ok"}
    out = []
    for (op, dim, tokens, mode), ms in sorted(ok.items()):
        ref = ok.get(("softmax", dim, tokens, mode))
        if op != "softmax" and ref:
            out.append(dict(op=op, dim=dim, tokens=tokens, mode=mode, speedup=ref / ms))
    return out


def print_table(rows: list[dict], ratios: list[dict]) -> None:
    print("\n| op | D | T | mode | ms | TFLOP/s | % bf16 peak | % HBM BW | diff vs chunked |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        diff = f"{r['err_vs_chunked']:.1e}" if "err_vs_chunked" in r else ""
        if "ms" not in r:
            print(f"| {r['op']} | {r['dim']} | {r['tokens']} | {r['mode']} | "
                  f"{r['status'].split(':')[0]} | | | | |")
            continue
        share = lambda x: f"{100 * x:.1f}" if x is not None else "-"
        ms = f"{r['ms']:.3f}" + ("" if r["status"] == "ok" else " (mismatch)")
        print(f"| {r['op']} | {r['dim']} | {r['tokens']} | {r['mode']} | {ms} | "
              f"{r['tflops']:.1f} | {share(r['peak_share'])} | {share(r['bandwidth_share'])} | "
              f"{diff} |")
    if ratios:
        print("\n| op | D | T | mode | speedup over softmax |")
        print("|---|---:|---:|---|---:|")
        for r in ratios:
            print(f"| {r['op']} | {r['dim']} | {r['tokens']} | {r['mode']} | "
                  f"{r['speedup']:.2f}x |")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--softmax_impl", default="cudnn", choices=("cudnn", "xla",
                                                                   "xla_default"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--min_seconds", type=float, default=1.0)
    parser.add_argument("--baseline", default=None,
                        help="JSON of an earlier run whose softmax rows join this run's "
                             "table and speedups (device_check.sh times softmax apart)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      f"kernels_{jax.default_backend()}.json"))
    args = parser.parse_args(argv)
    for t in args.tokens:
        if int(round(math.sqrt(t))) ** 2 != t:
            raise SystemExit(f"--tokens must be perfect squares (square grids), got {t}")
    info = run_info(heads=args.heads, dtype="bfloat16", softmax_impl=args.softmax_impl,
                    agreement_tol=AGREEMENT_TOL)

    baseline = []
    if args.baseline:
        try:
            with open(args.baseline) as f:
                baseline = [dict(r, source=args.baseline) for r in json.load(f)["rows"]
                            if r["op"] == "softmax"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--baseline {args.baseline}: not a kernels.py result JSON "
                             f"({type(e).__name__}: {e})") from e

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
