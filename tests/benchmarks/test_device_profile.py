"""benchmarks/device_profile.py says where a program's time went: its arithmetic on
synthetic kernel events whose answer is known, and a real profile of a program XLA
compiles here (on CPU the host's XLA thunks stand in for a GPU's kernels)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from device_profile import Event, busy_ns, format_profile, profile_call, summarize

from lasad_jax.sampling.hlo_check import called, parse_hlo
from tests.benchmarks.helpers import LOOP_HLO
from tests.helpers import DEFAULT_PIPELINE


def test_busy_time_counts_overlapping_kernels_once():
    events = [Event("a", "k", 0, 10), Event("b", "k", 5, 10),  # overlap: 0..15
              Event("c", "k", 20, 5),  # apart: 20..25
              Event("d", "k", 21, 2)]  # inside c
    assert busy_ns(events) == 15 + 5
    assert busy_ns([]) == 0


def test_summary_groups_by_instruction_with_bytes_and_drops_loops():
    """LOOP_HLO: a fusion `twice` outside a 10-trip loop whose body runs `row` and `new`.
    An event may name its loop too (XLA joins nested annotations with "::", either way
    round); the kernel of the program counts. The loop's own event (a host thunk holding
    its body's) is left out."""
    events = [Event("twice", "twice_kernel", 0, 4000)]
    for i in range(10):
        start = 5000 + 300 * i
        events += [Event("row::loop", "row_kernel", start, 100),
                   Event("loop::new", "new_kernel", start + 100, 200)]
    events.append(Event("loop", "loop", 5000, 3000))
    s = summarize(events, wall_ms=0.01, hlo_text=LOOP_HLO)
    assert [(o["op"], o["calls"]) for o in s["ops"]] == [("twice", 1), ("new", 10),
                                                         ("row", 10)]
    twice, new, row = s["ops"]
    assert twice["ms"] == pytest.approx(0.004) and new["ms"] == pytest.approx(0.002)
    assert s["kernel_ms"] == pytest.approx(0.007) and s["launches"] == 21
    assert s["busy_ms"] == pytest.approx(0.007)  # the loop's own event is not kernel time
    assert sum(o["share"] for o in s["ops"]) == pytest.approx(1.0)
    # Bytes per run from hlo_traffic (test_hlo_traffic checks them) times the launches.
    assert twice["gb"] == pytest.approx(2 * 25600 / 1e9)
    assert new["gb"] == pytest.approx(10 * (260 + 256) / 1e9)
    assert new["tb_per_s"] == pytest.approx(new["gb"] * 1e9 / 2e-6 / 1e12)
    # Without the HLO: the innermost (first) name, no bytes, nothing dropped.
    bare = summarize(events, wall_ms=0.01)
    assert {o["op"] for o in bare["ops"]} == {"twice", "row", "loop"}
    assert all(o["gb"] is None for o in bare["ops"])
    assert len(summarize(events, 0.01, LOOP_HLO, top=2)["ops"]) == 2


def _runs_a_dot(hlo_text: str, name: str) -> bool:
    comps = parse_hlo(hlo_text)
    instr = next(i for c in comps.values() for i in c if i.name == name)
    inner = [i for c in called(instr, "calls") for i in comps.get(c, [])]
    return instr.op in ("dot", "custom-call") or any(i.op == "dot" for i in inner)


def test_profile_of_a_compiled_program_finds_its_matmul():
    """A 1024 x 1024 matmul (2 GFLOP) beside a cheap elementwise tail: the heaviest
    instruction of the profile is the one that multiplies."""
    f = jax.jit(lambda x, y: jnp.tanh(x @ y) + 1.0)
    x = jnp.ones((1024, 1024), jnp.float32)
    compiled = f.lower(x, x).compile(DEFAULT_PIPELINE)
    jax.block_until_ready(compiled(x, x))
    p = profile_call(lambda: compiled(x, x), compiled.as_text())
    assert "error" not in p, p
    assert p["where"] == "host" and p["launches"] >= 2  # no device on CPU: host thunks
    assert 0 < p["busy_ms"] <= p["kernel_ms"] + 1e-9 and p["wall_ms"] > 0
    top = p["ops"][0]
    assert _runs_a_dot(compiled.as_text(), top["op"]), p["ops"]
    assert top["share"] > 0.5 and top["gb"] == pytest.approx(3 * 4 * 2**20 / 1e9, rel=0.01)
    lines = format_profile(p)
    assert "profile (host): kernels busy" in lines[0] and top["op"][:32] in lines[2]


def test_a_failing_call_leaves_an_error_not_an_exception():
    def broken():
        raise RuntimeError("device lost")

    p = profile_call(broken)
    assert p["error"].startswith("RuntimeError: device lost")
    assert format_profile(p) == ["    profile: RuntimeError: device lost"]
