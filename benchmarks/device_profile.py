"""Where a timed program's time goes on the device: one call under JAX's profiler.

    from device_profile import profile_call
    row["profile"] = profile_call(lambda: compiled(*inputs), compiled.as_text())

Why: issues 17 and 18 ask a missed target's note to say where the time goes, and a lent
GPU session has about 15 minutes of device time, not enough for a second visit with a
profiler. The timed stages of `device_check.sh` (`kernels.py --profile_tokens`,
`train_step.py --profile`, `sampling.py --profile_grids`) therefore run their chosen rows
once more under `jax.profiler.trace`, after timing them, and keep a summary in the row:

* `wall_ms`, `busy_ms`: the call's wall time and the time the device ran any kernel
  (overlapping kernels counted once). Far apart, the program is bound by launches and
  host work rather than by its kernels: the question for a sampled token of a fraction
  of a millisecond;
* `ops`: the heaviest HLO instructions (kernels are grouped by the `hlo_op` XLA records
  on each launch; a cuBLAS call or a Pallas kernel is one instruction): time, launches,
  share of kernel time, and, from the optimized HLO (`benchmarks/hlo_traffic.py`), the
  bytes it moves, the bandwidth that reached and the `lasad_jax` function it came from;
* `by_source`: kernel time per `lasad_jax` function.

While a profiler session is active XLA runs a command buffer's kernels one by one so
that each is seen; their durations are the kernels' own, measured on the device. Times
are of one call (the first timed ones are medians). A profiler that fails leaves
`{"error": ...}` in the row and the timing stands. On CPU the XLA thunks on the host
threads stand in for kernels (`where` names the plane), which is what the smoke tests
exercise. Only jax is needed: `jax.profiler.ProfileData` reads the trace.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
import time
import traceback
from typing import Callable, Iterable, NamedTuple

import jax

import hlo_traffic

TOP = 10  # instructions kept per profile
TOP_SOURCES = 8  # lasad_jax functions kept per profile
# An HLO instruction that runs other computations rather than a kernel of its own.
_CONTROL = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\s(?:while|conditional|call)\(",
                      re.M)


class Event(NamedTuple):
    op: str  # the kernel's `hlo_op` stat: its HLO instruction, or several joined by "::"
    kernel: str  # the launched kernel's own name
    start_ns: float
    duration_ns: float


def busy_ns(events: Iterable[Event]) -> float:
    """Time during which at least one event ran: the union of their intervals."""
    total, end = 0.0, float("-inf")
    for e in sorted(events, key=lambda e: e.start_ns):
        stop = e.start_ns + e.duration_ns
        if stop <= end:
            continue
        total += stop - max(e.start_ns, end)
        end = stop
    return total


def read_events(path: str) -> tuple[str, list[Event]]:
    """The kernel events of an `.xplane.pb` trace and the plane they came from: a device's
    (`/device:GPU:0`, ...) when it recorded any, else the host's XLA thunks (CPU).

    A GPU kernel carries the `hlo_op` of the XLA instruction that launched it (the
    profiler parses XLA's launch annotation); nested annotations (a loop around it) join
    several names with `::`, innermost first. A kernel on a device stream without one
    (none expected from XLA) is kept under its own name, so no device time goes missing.
    """
    from jax.profiler import ProfileData

    data = ProfileData.from_file(path)
    found: dict[str, list[Event]] = {}
    for plane in data.planes:
        device = plane.name.startswith("/device:")
        for line in plane.lines:
            stream = device and line.name.startswith("Stream")
            for e in line.events:
                op = dict(e.stats).get("hlo_op")
                if op or stream:
                    found.setdefault(plane.name, []).append(Event(
                        str(op) if op else e.name, e.name, float(e.start_ns),
                        float(e.duration_ns)))
    for name, events in found.items():
        if name.startswith("/device:"):
            return name, events
    host = [e for name, events in found.items() for e in events]
    return ("host" if host else "none"), host


def summarize(events: list[Event], wall_ms: float, hlo_text: str | None = None,
              top: int = TOP) -> dict:
    """Kernel time per HLO instruction, heaviest first, with each one's bytes and source
    from the optimized HLO when it is given (module docstring).

    With the HLO, an event names the instruction among its `hlo_op` names that is a
    kernel of the program (not the loop around it), and events of control flow (the
    host's `while` thunks on CPU, which contain their body's) are left out; without it,
    the innermost name counts."""
    bytes_per_run: dict[str, int] = {}
    sources: dict[str, str] = {}
    control: set[str] = set()
    if hlo_text:
        comps = hlo_traffic.parse_hlo(hlo_text)  # once: most of the time (11 MB, 2 s)
        kernels = hlo_traffic.traffic(hlo_text, comps=comps)
        for k, source in zip(kernels, hlo_traffic.kernel_sources(hlo_text, kernels,
                                                                  comps=comps)):
            bytes_per_run[k.name] = k.read + k.written
            sources[k.name] = source
        control = set(_CONTROL.findall(hlo_text))
    per_op: dict[str, dict] = {}
    kept = []
    for e in events:
        names = e.op.split("::")
        op = next((n for n in names if n in bytes_per_run), names[0])
        if op in control:
            continue
        kept.append(e)
        entry = per_op.setdefault(op, dict(op=op, kernel=e.kernel[:80], calls=0, ns=0.0))
        entry["calls"] += 1
        entry["ns"] += e.duration_ns
    events = kept
    kernel_ns = sum(entry["ns"] for entry in per_op.values())
    by_source: dict[str, float] = {}
    for entry in per_op.values():
        key = sources.get(entry["op"], "?")
        by_source[key] = by_source.get(key, 0.0) + entry["ns"]
    ops = []
    for entry in sorted(per_op.values(), key=lambda x: -x["ns"])[:top]:
        ms = entry["ns"] / 1e6
        row = dict(op=entry["op"], kernel=entry["kernel"], calls=entry["calls"], ms=ms,
                   share=entry["ns"] / kernel_ns if kernel_ns else None,
                   source=sources.get(entry["op"], "?"), gb=None, tb_per_s=None)
        if entry["op"] in bytes_per_run:
            moved = bytes_per_run[entry["op"]] * entry["calls"]
            row.update(gb=moved / 1e9, tb_per_s=moved / (ms * 1e-3) / 1e12 if ms else None)
        ops.append(row)
    return dict(wall_ms=wall_ms, busy_ms=busy_ns(events) / 1e6, kernel_ms=kernel_ns / 1e6,
                launches=len(events), ops=ops,
                by_source={k: v / 1e6 for k, v in sorted(by_source.items(),
                                                         key=lambda kv: -kv[1])[:TOP_SOURCES]})


def profile_call(run: Callable[[], object], hlo_text: str | None = None,
                 top: int = TOP) -> dict:
    """Runs `run()` once (compiled and warmed up already) under the profiler and
    summarizes it, with `where`: the plane the kernels came from. Never raises: a failure
    is `{"error": ...}`, since the row's timing matters more than its profile."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder):
                t0 = time.perf_counter()
                jax.block_until_ready(run())
                wall_ms = 1e3 * (time.perf_counter() - t0)
            paths = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
            if not paths:
                return dict(error="the profiler wrote no trace")
            where, events = read_events(paths[0])
        return dict(where=where, **summarize(events, wall_ms, hlo_text, top))
    except Exception as e:  # noqa: BLE001 - a profile is extra; the timing stands
        traceback.print_exc(limit=-3)
        return dict(error=f"{type(e).__name__}: {str(e)[:200]}")


def format_profile(profile: dict, indent: str = "    ", top: int = 5) -> list[str]:
    """A few printable lines: busy against wall, then the heaviest instructions."""
    if "error" in profile:
        return [f"{indent}profile: {profile['error']}"]
    lines = [f"{indent}profile ({profile['where']}): kernels busy {profile['busy_ms']:.3f} "
             f"of {profile['wall_ms']:.3f} ms wall, {profile['launches']} launches"]
    total = profile["kernel_ms"] or 1.0
    sources = ", ".join(f"{name} {100 * ms / total:.0f}%"
                        for name, ms in list(profile["by_source"].items())[:4])
    lines.append(f"{indent}  by source: {sources}")
    for op in profile["ops"][:top]:
        rate = f" {op['tb_per_s']:5.2f} TB/s" if op.get("tb_per_s") is not None else ""
        share = f"{100 * op['share']:4.1f}%" if op.get("share") is not None else "   ?"
        lines.append(f"{indent}  {share} {op['ms']:9.3f} ms x{op['calls']:<5d}{rate} "
                     f"{op['op'][:32]:32s} {op['source']}")
    return lines
