"""What one run of `benchmarks/device_check.sh` found: each target of issues 17 and 18,
met or missed, and the library defaults its measurements support.

    python benchmarks/report.py OUT                   # the folder device_check.sh wrote
    python benchmarks/report.py OUT1 OUT2 --out report.json   # both calls' folders

Each call of the device tool starts with an empty $OUT, so the report at the end of the
second call sees only that call's stages; the verdicts and defaults that combine stages
of both calls (the Pallas states against the XLA form, `AUTO_TABLE`) come from running
this script here on every call's folder (a stage found in several: the last folder's).

Why: a lent GPU session has about 15 minutes of device time, and reading seven JSON files
by hand afterwards is where figures get mixed up. `device_check.sh` runs this script last,
into `log.txt`, so the verdicts and the suggested defaults come back with the raw rows
even when no device time is left, and anyone can re-derive them from the JSON here.

Each measured time stands beside its byte floor where benchmarks/gpu_aot.py compiled the
same program (`--aot`, default results/gpu_aot_h200.json): a time far above it is compute
or launch bound, one near it memory bound, which is where a missed target's note starts.
It reads whichever stage files the folder holds (`kernels_core_gpu.json`, ...; one
backend), says which stages are missing or were cut by their time limit, and changes no
file but `--out`. Targets live beside the benchmark that measures them
(`kernels.TARGETS`, `train_step.TARGETS`, `sampling.TARGET_SPEEDUP`); suggestions name the
code they would change and are printed, never applied: a person reads the evidence first.
Rows that ran once more under JAX's profiler (`device_profile.py`) get their device busy
time and heaviest kernels printed under "Where the time goes".
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Callable

sys.path.insert(0, os.path.dirname(__file__))
import auto_table  # noqa: E402
import kernels  # noqa: E402
import sampling  # noqa: E402
import train_step  # noqa: E402
from common import write_json  # noqa: E402
from device_profile import format_profile  # noqa: E402

# The programs compiled for an H200 without one: their bytes give each row a floor.
AOT = os.path.join(os.path.dirname(__file__), "results", "gpu_aot_h200.json")
# Issue 17 sets its sampling targets for both presets.
TARGET_PRESETS = ("L", "B")
STAGES = ("kernels_core", "kernels_pallas", "kernels_tiles", "kernels_sweep", "kernels_rest",
          "train_step", "sampling")
KERNEL_STAGES = ("kernels_core", "kernels_pallas", "kernels_sweep", "kernels_rest")


def load(folders: list[str]) -> tuple[str, dict[str, dict]]:
    """The backend and each stage's result JSON, by stage name, from the folders in order
    (a later folder's stage replaces an earlier one's: a stage run again after a change).
    Files of several backends are refused: a verdict compares rows of one device."""
    found: dict[str, dict] = {}
    backends = set()
    paths = [p for folder in folders for p in sorted(glob.glob(os.path.join(folder, "*.json")))]
    for path in paths:
        m = re.fullmatch(r"(.+)_([a-z]+)\.json", os.path.basename(path))
        if not m or m.group(1) not in STAGES:
            continue
        try:
            with open(path) as f:
                result = json.load(f)
            rows = result["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}: not a benchmark result JSON ({type(e).__name__}: {e})")
        if not isinstance(rows, list):
            raise SystemExit(f"{path}: 'rows' is not a list")
        found[m.group(1)] = result
        backends.add(m.group(2))
    where = ", ".join(folders)
    if not found:
        raise SystemExit(f"{where}: no stage JSON of benchmarks/device_check.sh "
                         f"({', '.join(s + '_<backend>.json' for s in STAGES)})")
    if len(backends) != 1:
        raise SystemExit(f"{where}: files of backends {sorted(backends)}; give one's")
    return backends.pop(), found


def verdict(ratio: float | None, limit: float, higher_is_better: bool = False) -> str:
    if ratio is None:
        return "not measured"
    return "met" if (ratio >= limit if higher_is_better else ratio <= limit) else "MISSED"


def operator_targets(rows: list[dict]) -> list[dict]:
    """Issue 18, point 4: the fastest checked LASAD form that `impl="auto"` can choose,
    forward+backward, over the softmax baseline of the same run; at the targets' shape
    (`kernels.TARGET_SHAPE`, with `limit`) and at every other shape measured (`limit`
    None: reported, as the issue asks)."""
    # (Rows of kernels.py before 2026-12-05 have no batch: no shape, no verdict.)
    shapes = {(r["batch"], r["dim"]) for r in rows
              if r.get("op") == "softmax" and "batch" in r and "dim" in r}
    target = (kernels.TARGET_SHAPE["batch"], kernels.TARGET_SHAPE["dim"])
    out = []
    for batch, dim in [target] + sorted(shapes - {target}):
        shape = dict(batch=batch, dim=dim, mode="fwd_bwd")
        ranked = auto_table.candidates(rows, **shape)
        soft = auto_table.softmax_ms(rows, **shape)
        limits = kernels.TARGETS if (batch, dim) == target else dict.fromkeys(sorted(soft))
        for t, limit in limits.items():
            best = ranked.get(t, [None])[0]
            ratio = best["ms"] / soft[t] if best and t in soft else None
            impl = best and auto_table.IMPL_OF_OP[best["op"]]
            chunk = best and best.get("chunk_size")
            out.append(dict(batch=batch, dim=dim, tokens=t, limit=limit, impl=impl,
                            chunk_size=chunk, lasad_ms=best and best["ms"],
                            softmax_ms=soft.get(t), ratio=ratio,
                            lasad=best and f"{impl} C={chunk}",
                            verdict="no target" if limit is None else verdict(ratio, limit)))
    return out


def step_targets(rows: list[dict]) -> list[dict]:
    """Issue 18, point 5: LASAD's training step over softmax's, per size and `impl`."""
    out = []
    for r in train_step.ratios(rows):
        limit = train_step.TARGETS.get(r["grid"])
        lasad = next(x for x in rows if x.get("mixer") == "lasad" and x.get("impl") == r["impl"]
                     and x["grid"] == r["grid"] and x["batch"] == r["batch"] and "step_ms" in x)
        out.append(dict(r, limit=limit, step_ms=lasad["step_ms"], mfu=lasad.get("mfu"),
                        tokens_per_s=lasad["tokens_per_s"],
                        verdict="no target" if limit is None else
                        verdict(r["lasad_over_softmax"], limit)))
    return out


def sampling_targets(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Issue 17, point 5: images/s over softmax's per LASAD row, and the last/first
    quarter ratio per size (measured once a size)."""
    speed, quarters = [], {}
    for v in sampling.verdict(rows):
        target = v.get("target")
        speed.append(dict(v, verdict="no target" if target is None else
                          verdict(v.get("speedup"), target, higher_is_better=True)))
        quarters.setdefault((v["preset"], v["grid"]), dict(
            preset=v["preset"], grid=v["grid"], ratio=v.get("quarter_ratio"),
            limit=sampling.TARGET_QUARTER_RATIO,
            verdict=verdict(v.get("quarter_ratio"), sampling.TARGET_QUARTER_RATIO)))
    return speed, list(quarters.values())


def add_byte_floors(report: dict, path: str, device: str) -> None:
    """Adds `floor_ms` to the operator, step and sampling entries: the time the compiled
    program's HBM bytes alone take at the measured device's bandwidth (`kernels.PEAKS`),
    from benchmarks/gpu_aot.py's compile of the same programs for an sm_90 GPU (an H100
    and an H200 run the same code). A measured time far above its floor is compute, launch
    or latency bound, one near it is memory bound: the first cut of where the time goes.
    Nothing is added for a device without a known bandwidth, or without the file."""
    bandwidth = kernels.PEAKS.get(device, (None, None))[1]
    if not bandwidth or not os.path.isfile(path):
        return
    with open(path) as f:
        aot = json.load(f)
    ms = 1e3 / (bandwidth * 1e12)
    floors = {("ops", r["tokens"], r["impl"], r["chunk_size"]): r["bytes"] * ms
              for r in aot.get("ops", [])}
    floors.update({("train", r["mixer"], r["impl"], r["grid"], r["batch"]): r["bytes"] * ms
                   for r in aot.get("train", [])})
    floors.update({("decode", r["preset"], r["grid"], r["state_dtype"], r["decode_impl"]):
                   r["bytes_per_token"] * ms
                   for r in aot.get("decode", []) if r["mixer"] == "lasad"})
    shape = (kernels.TARGET_SHAPE["batch"], kernels.TARGET_SHAPE["dim"])
    for r in report["operator"]:  # gpu_aot.py compiled the target shape only
        if (r["batch"], r["dim"]) == shape:
            r["floor_ms"] = floors.get(("ops", r["tokens"], r["impl"], r["chunk_size"]))
    for r in report["train_step"]:
        r["floor_ms"] = floors.get(("train", "lasad", r["impl"], r["grid"], r["batch"]))
    for v in report["sampling"]:
        v["floor_ms"] = floors.get(("decode", v["preset"], v["grid"], v["state_dtype"],
                                    v["decode_impl"]))
    report["floors_from"] = os.path.relpath(path)


def fastest_tiles(rows: list[dict]) -> dict | None:
    """The tile setting with the least total time over the shapes every setting ran at
    (`masked_probe.py` rows), or None if no setting ran at every shape."""
    def setting(r: dict) -> tuple:
        return tuple(r.get(k) for k in ("block_q", "block_k", "num_warps", "num_stages"))

    ok = [r for r in rows if r.get("status") == "ok"]
    shapes = {(r["batch"], r["tokens"]) for r in rows}
    totals: dict[tuple, list[float]] = {}
    for r in ok:
        totals.setdefault(setting(r), []).append(r["ms"])
    full = {k: sum(v) for k, v in totals.items() if len(v) == len(shapes)}
    if not full:
        return None
    key = min(full, key=full.get)
    default = setting(ok[0])  # the probe times the default first
    return dict(tiles=key, total_ms=full[key], default=default, default_ms=full.get(default))


def chunk_defaults(rows: list[dict]) -> list[dict]:
    """Per T, the fastest checked chunk size and remat policy of the XLA form (the
    `chunk_sweep` stage): the data for `ops.chunked.DEFAULTS`."""
    by_t: dict[int, list[dict]] = {}
    for r in rows:
        if r.get("op") == "lasad_chunked" and r.get("status") == "ok" and r["mode"] == "fwd_bwd":
            by_t.setdefault(r["tokens"], []).append(r)
    best = {t: min(rs, key=lambda r: r["ms"]) for t, rs in sorted(by_t.items())}
    return [dict(tokens=t, chunk_size=r["chunk_size"], remat=r["remat"], ms=r["ms"])
            for t, r in best.items()]


def state_storage(rows: list[dict]) -> list[dict]:
    """The Pallas split's float32-state rows (the `chunk_sweep` stage) against its default
    rows (bf16 states for these bf16 inputs; the `pallas` stage) at the same shape, T and
    chunk: the data for `ops.pallas.chunked.state_storage`."""
    def key(r):
        return r["batch"], r["dim"], r["tokens"], r["mode"], r["chunk_size"]

    ok = [r for r in rows if r.get("op") == "lasad_pallas" and r.get("status") == "ok"]
    default = {key(r): r for r in ok if r.get("state_dtype") is None}
    out = []
    for r in ok:
        d = default.get(key(r))
        if r.get("state_dtype") == "float32" and d is not None:
            out.append(dict(tokens=r["tokens"], chunk_size=r["chunk_size"], mode=r["mode"],
                            float32_ms=r["ms"], default_ms=d["ms"],
                            float32_over_default=r["ms"] / d["ms"]))
    return out


def decode_choices(rows: list[dict]) -> list[dict]:
    """LASAD images/s of each decoding step and state dtype, per size, over the XLA step
    with float32 states (the defaults)."""
    lasad = [r for r in rows if r.get("mixer") == "lasad" and "images_per_s" in r]
    out = []
    for r in lasad:
        base = next((b for b in lasad if b["preset"] == r["preset"] and b["grid"] == r["grid"]
                     and b["decode_impl"] == "xla" and b["state_dtype"] == "float32"), None)
        out.append(dict(preset=r["preset"], grid=r["grid"], decode_impl=r["decode_impl"],
                        state_dtype=r["state_dtype"], images_per_s=r["images_per_s"],
                        over_default=base and r["images_per_s"] / base["images_per_s"]))
    return out


def untimed_label(stage: str, r: dict) -> str:
    """What names a row that was not timed: `row_label`'s heading without a time."""
    if stage == "kernels_tiles":
        return (f"tiles {r.get('block_q')}:{r.get('block_k')}:{r.get('num_warps')}:"
                f"{r.get('num_stages')} at batch {r.get('batch')} x {r.get('tokens')} tokens")
    return row_label(stage, r).rsplit(":", 1)[0]


def row_label(stage: str, r: dict) -> str:
    """One line naming a measured row and its time, for its profile's heading."""
    if stage == "train_step":
        return (f"train step, {r['mixer']} ({r['impl']}), {16 * r['grid']} px batch "
                f"{r['batch']}: {fmt(r.get('step_ms'), '.1f')} ms")
    if stage == "sampling":
        state = "" if r["mixer"] == "softmax" else f" ({r['state_dtype']} states, " \
            f"{r['decode_impl']} step)"
        return (f"sampling, {r['preset']} {r['grid']}x{r['grid']} {r['mixer']}{state}: "
                f"{fmt(r.get('ms_per_token'))} ms/token")
    return (f"operator, {r['op']} chunk {r.get('chunk_size')}, B={r['batch']} D={r['dim']} "
            f"T={r['tokens']} {r['mode']}: {fmt(r.get('ms'))} ms")


# The measured time of a row, by stage: what a profile's busy time is set against.
TIMED_MS = {"train_step": "step_ms", "sampling": "ms_per_batch"}


def profiles(found: dict[str, dict]) -> list[dict]:
    """Every row that ran once more under the profiler (`device_profile.py`), by stage,
    with its timed ms (`timed_ms`) beside the profiled call's."""
    return [dict(stage=stage, label=row_label(stage, r), profile=r["profile"],
                 timed_ms=r.get(TIMED_MS.get(stage, "ms")))
            for stage in STAGES for r in found.get(stage, {}).get("rows", [])
            if "profile" in r]


def busy_share(entry: dict) -> str | None:
    """The device's busy time as a share of the row's timed call: the profiled call's own
    wall time runs longer (XLA turns CUDA graphs off under the profiler, and the
    sampler's loop then waits on the host each token), so the timed call is the honest
    measure of how much of the time the kernels fill."""
    busy, timed = entry["profile"].get("busy_ms"), entry.get("timed_ms")
    if busy is None or not timed:
        return None
    return (f"    kernels busy {busy:.3f} ms = {100 * busy / timed:.0f}% of the timed "
            f"{timed:.3f} ms")


def best_verdict(rows: list[dict], key: str, higher_is_better: bool) -> str:
    """The verdict of the row with the best `key`; "not measured" without one."""
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return "not measured"
    pick = max if higher_is_better else min
    return pick(rows, key=lambda r: r[key])["verdict"]


def table(title: str | None, columns: list[str], rows: list[dict],
          cells: Callable[[dict], list], empty: str | None = None) -> None:
    """A markdown table under a `## title` (none: under the table before); a column named
    with a leading ">" is right-aligned."""
    print(f"\n## {title}" if title else "")
    print("| " + " | ".join(c.lstrip(">") for c in columns) + " |")
    print("|" + "|".join("---:" if c.startswith(">") else "---" for c in columns) + "|")
    if not rows and empty:
        print(f"| (no rows: {empty}) |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in cells(r)) + " |")


def fmt(x: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def limit(x: float | None, relation: str, suffix: str = "x") -> str:
    return "-" if x is None else f"{relation} {x}{suffix}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="the OUT folders of benchmarks/device_check.sh's "
                                              "calls (a stage in several: the last one's)")
    p.add_argument("--out", default=None, help="JSON of every verdict and suggestion")
    p.add_argument("--aot", default=AOT,
                   help="benchmarks/gpu_aot.py's JSON, for the byte floors (default: %(default)s)")
    args = p.parse_args(argv)
    if args.aot != AOT and not os.path.isfile(args.aot):  # the default may be absent
        raise SystemExit(f"--aot: no such file {args.aot!r} (benchmarks/gpu_aot.py's JSON)")
    backend, found = load(args.folders)
    info = next(iter(found.values())).get("info", {})
    print(f"# device_check report: {info.get('device', backend)}, {info.get('date', '?')}, "
          f"jax {info.get('jax', '?')}")
    missing = [s for s in STAGES if s not in found]
    cut = [s for s, r in found.items() if not r.get("complete", False)]
    print(f"stages read: {', '.join(found)}; missing: {', '.join(missing) or 'none'}; "
          f"cut by their time limit: {', '.join(cut) or 'none'}")
    kernel_rows = [r for s in KERNEL_STAGES if s in found for r in found[s]["rows"]]
    report: dict = dict(backend=backend, info=info, missing=missing, cut=cut)
    # Rows that ran but were not timed (a wrong kernel, a refused compile, out of
    # memory): their stage goes on without them, so they are named here.
    report["not_timed"] = [dict(stage=stage, row=untimed_label(stage, r), status=r["status"])
                           for stage, result in found.items() for r in result.get("rows", [])
                           if r.get("status", "ok") != "ok"]
    for entry in report["not_timed"]:
        print(f"not timed: {entry['row']} ({entry['status']})")

    report["operator"] = operator_targets(kernel_rows)
    report["train_step"] = step_targets(found.get("train_step", {}).get("rows", []))
    report["sampling"], report["quarters"] = sampling_targets(
        found.get("sampling", {}).get("rows", []))
    add_byte_floors(report, args.aot, info.get("device", ""))
    if "floors_from" in report:
        print(f"byte floors: the compiled programs' HBM bytes ({report['floors_from']}) at "
              f"{info['device']}'s bandwidth")

    table("Issue 18.4: operator forward+backward time, LASAD (the fastest checked form "
          "`auto` can pick) over softmax",
          [">batch", ">D", ">T", "LASAD", ">ms", ">byte floor ms", ">softmax ms", ">ratio",
           ">target", "verdict"],
          report["operator"], lambda r: [
              r["batch"], r["dim"], r["tokens"], r["lasad"] or "-", fmt(r["lasad_ms"]),
              fmt(r.get("floor_ms")), fmt(r["softmax_ms"]), fmt(r["ratio"], ".2f", "x"),
              limit(r["limit"], "<="), r["verdict"]])
    table("Issue 18.5: LASADGen-L training step over softmax's",
          [">px", ">batch", "impl", ">step ms", ">byte floor ms", ">tokens/s", ">MFU (6N)",
           ">ratio", ">target", "verdict"],
          report["train_step"], lambda r: [
              16 * r["grid"], r["batch"], r["impl"], f"{r['step_ms']:.1f}",
              fmt(r.get("floor_ms"), ".1f"), f"{r['tokens_per_s']:,.0f}",
              fmt(r["mfu"] and 100 * r["mfu"], ".1f", "%"), f"{r['lasad_over_softmax']:.2f}x",
              limit(r["limit"], "<="), r["verdict"]],
          empty="no train_step JSON")
    table("Issue 17.5: sampling, LASAD images/s over softmax's",
          ["preset", "tokens", "states, step", ">ms/token", ">byte floor", ">speedup",
           ">target", "verdict"],
          report["sampling"], lambda v: [
              v["preset"], f"{v['grid']}x{v['grid']}", f"{v['state_dtype']} {v['decode_impl']}",
              fmt(v["ms_per_token"]), fmt(v.get("floor_ms")), fmt(v.get("speedup"), ".2f", "x"),
              limit(v.get("target"), ">="), v["verdict"]],
          empty="no sampling JSON, or no LASAD row with its softmax twin")
    table(None, ["preset", "tokens", ">LASAD last/first quarter, time per token", ">target",
                 "verdict"],
          report["quarters"], lambda q: [
              q["preset"], f"{q['grid']}x{q['grid']}", fmt(q["ratio"]),
              limit(q["limit"], "<=", ""), q["verdict"]])

    report["profiles"] = profiles(found)
    print("\n## Where the time goes: rows run once more under the profiler")
    if not report["profiles"]:
        print("(none profiled)")
    for entry in report["profiles"]:
        print(f"{entry['label']}")
        share = busy_share(entry)
        if share:
            print(share)
        print("\n".join(format_profile(entry["profile"])))

    print("\n## Defaults the measurements support (printed, not applied)")
    # The table ranks every form at each length: from one form's stage alone it would
    # crown that form (the second call's chunk sweep holds the XLA form only).
    ranked = auto_table.candidates(kernel_rows, **{**kernels.TARGET_SHAPE, "mode": "fwd_bwd"})
    both = "kernels_core" in found and "kernels_pallas" in found
    report["auto_table"] = (auto_table.table_rows(backend, {t: rs[0] for t, rs in ranked.items()})
                            if both else [])
    print("ops.api.AUTO_TABLE rows:" if report["auto_table"] else
          "ops.api.AUTO_TABLE: no checked LASAD rows at the target shape" if both else
          "ops.api.AUTO_TABLE: not suggested without both the core and the pallas stage "
          "(run this script on every call's folder)")
    for row in report["auto_table"]:
        bound = 'float("inf")' if row["max_tokens"] is None else row["max_tokens"]
        print(f"    Auto({row['platform']!r}, {bound}, {row['impl']!r}, {row['chunk_size']}),")
    report["chunk_defaults"] = chunk_defaults(found.get("kernels_sweep", {}).get("rows", []))
    for r in report["chunk_defaults"]:
        print(f"ops.chunked.DEFAULTS[{backend!r}] at T = {r['tokens']}: chunk {r['chunk_size']}, "
              f"remat {r['remat']!r} ({r['ms']:.3f} ms)")
    report["state_storage"] = state_storage(kernel_rows)
    for r in report["state_storage"]:
        print(f"ops.pallas.chunked.state_storage at T = {r['tokens']}, chunk {r['chunk_size']} "
              f"({r['mode']}): float32 states {r['float32_ms']:.3f} ms, default (bf16) "
              f"{r['default_ms']:.3f} ms: {r['float32_over_default']:.2f}x")
    report["tiles"] = fastest_tiles(found.get("kernels_tiles", {}).get("rows", []))
    if report["tiles"]:
        t = report["tiles"]
        print(f"ops.pallas.masked.default_tiles (16-bit): Tiles{t['tiles']}, "
              f"{t['total_ms']:.3f} ms over the shapes against {fmt(t['default_ms'])} for the "
              f"default Tiles{t['default']}")
    report["decode"] = decode_choices(found.get("sampling", {}).get("rows", []))
    for r in report["decode"]:
        if r["decode_impl"] != "xla" or r["state_dtype"] != "float32":
            print(f"decode {r['preset']} {r['grid']}x{r['grid']}: {r['decode_impl']} step, "
                  f"{r['state_dtype']} states: {fmt(r['over_default'], '.2f', 'x')} the XLA "
                  "step with float32 states (ops.api.DECODE_AUTO_TABLE, "
                  "model.decode_state_dtype)")
    # One verdict per target, measured or not: a size's best LASAD row counts (the
    # defaults can pick it).
    verdicts = [r["verdict"] for r in report["operator"] if r["limit"] is not None]
    verdicts += [best_verdict([r for r in report["train_step"] if r["grid"] == grid],
                              "lasad_over_softmax", higher_is_better=False)
                 for grid in train_step.TARGETS]
    for preset in TARGET_PRESETS:
        for grid in sampling.TARGET_SPEEDUP:
            size = [v for v in report["sampling"] if (v["preset"], v["grid"]) == (preset, grid)]
            verdicts.append(best_verdict(size, "speedup", higher_is_better=True))
            verdicts += [q["verdict"] for q in report["quarters"]
                         if (q["preset"], q["grid"]) == (preset, grid)] or ["not measured"]
    report["missed"] = verdicts.count("MISSED")
    report["not_measured"] = verdicts.count("not measured")
    print(f"\ntargets (a size's best LASAD row each): {verdicts.count('met')} met, "
          f"{report['missed']} missed, {report['not_measured']} not measured")
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
