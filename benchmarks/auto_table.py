"""The `ops.AUTO_TABLE` rows that `benchmarks/kernels.py` measurements support.

    python benchmarks/auto_table.py OUT/kernels_core_gpu.json OUT/kernels_pallas_gpu.json \
        OUT/kernels_sweep_gpu.json                     # after benchmarks/device_check.sh

For each sequence length T measured at one shape (`--batch`, `--dim`, default 1 and 64,
the issue's target shape) in `--mode` (default `fwd_bwd`, what training runs), the fastest
LASAD row that passed its check (`status == "ok"`: every timed row was compared with the
float32 reference first) names an implementation and a chunk size. Lengths in a row that
pick the same pair merge into one range: a table row `Auto(platform, longest T, impl,
chunk)`, the last one open-ended (`max_tokens` null in the JSON). The script prints the
evidence (fastest, runner-up and cuDNN per T) and the rows as Python to paste into
`lasad_jax/ops/api.py`; it changes no file but `--out`. The chunked form's remat policy
and state pass are its defaults (`ops.chunked`): rows timed with others are left out,
since the table cannot choose them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from lasad_jax.ops import chunked  # noqa: E402
from common import write_json  # noqa: E402

IMPL_OF_OP = {"lasad_chunked": "chunked", "lasad_pallas": "pallas"}


def load(paths: list[str]) -> tuple[str, list[dict]]:
    """The backend the files were measured on, and all their rows. Files from different
    backends are refused: a table row is for one platform."""
    backends, rows = set(), []
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
            backends.add(result["info"]["backend"])
            rows.extend(result["rows"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}: not a kernels.py result JSON ({type(e).__name__}: {e})")
    if len(backends) != 1:
        raise SystemExit(f"the files come from backends {sorted(backends)}; give one's")
    return backends.pop(), rows


def candidates(rows: list[dict], *, batch: int, dim: int, mode: str) -> dict[int, list[dict]]:
    """Checked LASAD rows at the shape, by T, fastest first; the default remat and state
    pass only, and the Pallas split with its default state storage only (the table picks
    an impl and a chunk, not a storage)."""
    by_t: dict[int, list[dict]] = {}
    for r in rows:
        if (r.get("op") not in IMPL_OF_OP or r.get("status") != "ok" or r.get("batch") != batch
                or r.get("dim") != dim or r.get("mode") != mode):
            continue
        if r["op"] == "lasad_chunked" and (r.get("remat") != chunked.DEFAULT_REMAT or
                                           r.get("state_pass") != chunked.DEFAULT_STATE_PASS):
            continue
        if r["op"] == "lasad_pallas" and r.get("state_dtype") is not None:
            continue
        by_t.setdefault(r["tokens"], []).append(r)
    return {t: sorted(rs, key=lambda r: r["ms"]) for t, rs in sorted(by_t.items())}


def table_rows(platform: str, best: dict[int, dict]) -> list[dict]:
    """Merges consecutive lengths with the same (impl, chunk) into ranges; the last range
    has no upper bound."""
    out: list[dict] = []
    for t, r in best.items():
        choice = (IMPL_OF_OP[r["op"]], r["chunk_size"])
        if out and (out[-1]["impl"], out[-1]["chunk_size"]) == choice:
            out[-1]["max_tokens"] = t
        else:
            out.append(dict(platform=platform, max_tokens=t, impl=choice[0],
                            chunk_size=choice[1]))
    if out:
        out[-1]["max_tokens"] = None  # no bound: float("inf") in the table
    return out


def softmax_ms(rows: list[dict], *, batch: int, dim: int, mode: str) -> dict[int, float]:
    return {r["tokens"]: r["ms"] for r in rows if r.get("op") == "softmax"
            and r.get("status") == "ok" and r.get("batch") == batch and r.get("dim") == dim
            and r.get("mode") == mode}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="kernels.py result JSONs of one device")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--mode", default="fwd_bwd", choices=("fwd_bwd", "fwd"))
    p.add_argument("--out", default=None, help="JSON of the evidence and the rows")
    args = p.parse_args(argv)
    platform, rows = load(args.files)
    shape = dict(batch=args.batch, dim=args.dim, mode=args.mode)
    ranked = candidates(rows, **shape)
    if not ranked:
        raise SystemExit(f"no checked LASAD rows at batch {args.batch}, D = {args.dim}, "
                         f"{args.mode} in {args.files}")
    soft = softmax_ms(rows, **shape)
    # The softmax rows' variant is the attention kernel they ran (`kernels.py --softmax_impl`).
    kinds = sorted({r.get("variant", "?") for r in rows if r.get("op") == "softmax"})
    label = "cuDNN" if kinds == ["cudnn"] else f"softmax ({'/'.join(kinds) or 'none'})"
    print(f"| T | fastest | ms | runner-up | ms | {label} ms | speedup |  ({platform}, "
          f"batch {args.batch}, D = {args.dim}, {args.mode})")
    print("|---:|---|---:|---|---:|---:|---:|")
    evidence = []
    def name(r: dict | None) -> str:
        return f"{IMPL_OF_OP[r['op']]} C={r['chunk_size']}" if r else "-"

    def ms(x: float | None) -> str:
        return f"{x:.3f}" if x else "-"

    for t, rs in ranked.items():
        first, second = rs[0], (rs[1] if len(rs) > 1 else None)
        sm = soft.get(t)
        speedup = f"{sm / first['ms']:.2f}x" if sm else "-"
        print(f"| {t} | {name(first)} | {ms(first['ms'])} | {name(second)} | "
              f"{ms(second and second['ms'])} | {ms(sm)} | {speedup} |")
        evidence.append(dict(tokens=t, fastest=first, runner_up=second, softmax_ms=sm))
    table = table_rows(platform, {t: rs[0] for t, rs in ranked.items()})
    print("\nRows for AUTO_TABLE (ops/api.py), before its catch-all row:")
    for row in table:
        bound = 'float("inf")' if row["max_tokens"] is None else row["max_tokens"]
        print(f"    Auto({row['platform']!r}, {bound}, {row['impl']!r}, {row['chunk_size']}),")
    result = dict(platform=platform, shape=shape, evidence=evidence, auto_table=table)
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
