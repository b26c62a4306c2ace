"""The benchmark scripts run end to end (tiny sizes) and write what they promise."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import op_scaling  # benchmarks/ (tests/benchmarks/conftest.py puts it on the path)
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_op_scaling_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    op_scaling.main(["--tokens", "16", "64", "--repeats", "1", "--min_seconds", "0",
                     "--heads", "2", "--dim", "8", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {(r["op"], r["mode"], r["tokens"]) for r in rows} == {
        (op, mode, t) for op in ("lasad_chunked", "lasad_reference", "softmax")
        for mode in ("fwd", "fwd_bwd") for t in (16, 64)}
    assert all(r["ms"] > 0 and r["bytes"] > 0 for r in rows)
    assert result["info"]["backend"] == "cpu"
    assert "| lasad_chunked | 64 |" in capsys.readouterr().out


def test_kernels_times_each_chunk_layout_once(tmp_path):
    """Chunk sizes that cut a grid into the same chunks (every size >= T is one chunk) run
    the same program: one row for them, under the first size's label."""
    import kernels

    result = kernels.main(["--smoke", "--ops", "lasad_chunked", "--modes", "fwd",
                           "--chunk_sizes", "16", "32", "64", "--out",
                           str(tmp_path / "k.json")])
    timed = sorted((r["tokens"], r["chunk_size"]) for r in result["rows"])
    # T = 16 (4 x 4): one chunk at every size. T = 64 (8 x 8): 2, 4 and 8 rows per chunk.
    assert timed == [(16, 16), (64, 16), (64, 32), (64, 64)]
    assert all(r["status"] == "ok" for r in result["rows"])
    # XLA's count of the traffic: more bytes for the longer sequence at the same chunk.
    moved = {(r["tokens"], r["chunk_size"]): r["xla_bytes_accessed"] for r in result["rows"]}
    assert 0 < moved[(16, 16)] < moved[(64, 16)]


def _kernels_json(path, backend: str, rows: list[dict]) -> str:
    base = dict(batch=1, dim=64, mode="fwd_bwd", status="ok", remat="inputs",
                state_pass="scan")
    path.write_text(json.dumps({"info": {"backend": backend},
                                "rows": [dict(base, **r) for r in rows]}))
    return str(path)


def test_auto_table_rows_follow_the_fastest_checked_form(tmp_path, capsys):
    """Per T the fastest LASAD row that passed its check; equal neighbours merge, the last
    range is open. Faster rows that failed their check, or use a remat or a state storage
    the table cannot choose, or another shape, do not count."""
    import auto_table

    def row(op, t, c, ms, **extra):
        return dict(op=op, tokens=t, chunk_size=c, ms=ms, **extra)

    core = _kernels_json(tmp_path / "core.json", "gpu", [
        row("lasad_chunked", 256, 1024, 0.20), row("softmax", 256, None, 0.17),
        row("lasad_chunked", 1024, 1024, 0.30), row("softmax", 1024, None, 0.28),
        row("lasad_chunked", 4096, 1024, 0.90), row("softmax", 4096, None, 0.68),
        row("lasad_chunked", 16384, 1024, 4.00), row("softmax", 16384, None, 5.09),
        row("lasad_chunked", 4096, 512, 0.10, remat="none"),  # a choice the table lacks
        row("lasad_chunked", 1024, 1024, 0.01, dim=128),  # another shape
    ])
    pallas = _kernels_json(tmp_path / "pallas.json", "gpu", [
        row("lasad_pallas", 256, 1024, 0.25), row("lasad_pallas", 1024, 1024, 0.29),
        row("lasad_pallas", 4096, 1024, 0.40), row("lasad_pallas", 4096, 2048, 0.35),
        row("lasad_pallas", 16384, 2048, 1.00),
        row("lasad_pallas", 16384, 4096, 0.50, status="mismatch: 1e-1"),
        row("lasad_pallas", 1024, 2048, 0.02, state_dtype="float32"),  # storage: not chosen
    ])
    out = tmp_path / "auto.json"
    result = auto_table.main([core, pallas, "--out", str(out)])
    assert [(r["max_tokens"], r["impl"], r["chunk_size"]) for r in result["auto_table"]] == [
        (256, "chunked", 1024), (1024, "pallas", 1024), (None, "pallas", 2048)]
    assert json.loads(out.read_text())["auto_table"][-1]["max_tokens"] is None
    printed = capsys.readouterr().out
    assert "Auto('gpu', 1024, 'pallas', 1024)," in printed
    assert "Auto('gpu', float(\"inf\"), 'pallas', 2048)," in printed
    assert "| 16384 | pallas C=2048 | 1.000 | chunked C=1024 | 4.000 | 5.090 | 5.09x |" in printed
    other = _kernels_json(tmp_path / "cpu.json", "cpu", [row("lasad_chunked", 256, 1024, 1.0)])
    with pytest.raises(SystemExit, match="backends"):
        auto_table.main([core, other])
    with pytest.raises(SystemExit, match="no checked LASAD rows"):
        auto_table.main([core, "--dim", "32"])


@pytest.mark.slow
def test_generation_times_every_position_for_both_mixers(tmp_path, capsys):
    import generation

    out, png = tmp_path / "generation.json", tmp_path / "generation.png"
    layers, dim, grid, batch = 1, 16, 4, 2
    generation.main(["--presets", "tiny", "--layers", str(layers), "--heads", "2", "--dim",
                     str(dim), "--vocab", "32", "--classes", "4", "--grids", str(grid),
                     "--batch", str(batch), "--passes", "1", "--out", str(out),
                     "--plot", str(png)])
    result = json.loads(out.read_text())
    rows = {r["mixer"]: r for r in result["rows"]}
    assert set(rows) == {"lasad", "softmax"}
    for r in rows.values():
        assert len(r["series_ms"]) == grid * grid  # class slot + every fed token
        assert all(t > 0 for t in r["series_ms"])
        assert r["first_quarter_ms"] > 0 and r["last_quarter_ms"] > 0 and r["ms_per_image"] > 0
        assert r["ratio_last_over_first"] > 0
        assert r["peak_bytes"] >= r["weight_bytes"] > 0
    # Keys and values of 1 + grid^2 slots per layer in float32, plus the int32 slot counter.
    assert rows["softmax"]["state_bytes"] == 2 * layers * (1 + grid * grid) * dim * 4 * batch + 4
    assert result["verdict"]["met"] in (True, False)
    assert png.stat().st_size > 0 and result["plot"] == str(png)
    assert "| tiny | 4x4 | lasad |" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_ablation_runs(tmp_path, capsys):
    import demo_ablation

    out = tmp_path / "ablation.json"
    rows = demo_ablation.main(["--steps", "2", "--runs", "mixer=linear", "--out", str(out)])
    assert [r["run"] for r in rows] == ["mixer=linear"]
    assert 0 < rows[0]["val_bits"] < 5  # uniform over 17 levels is 4.09 bits
    assert json.loads(out.read_text())["rows"][0]["steps"] == 2
    assert "| mixer=linear |" in capsys.readouterr().out


@pytest.mark.slow
def test_device_check_script_runs_every_stage(tmp_path):
    """The one command prepared for a lent GPU, at tiny sizes on CPU: each stage runs and
    leaves its log and JSON (at most 8 files, the device tool's limit on what comes back)."""
    script = ROOT / "benchmarks" / "device_check.sh"
    # The device has no pytest-xdist, so the pallas_tests stage must not ask for workers.
    env = dict(os.environ, PYTHON=sys.executable, PYTEST_ADDOPTS="-p no:xdist")
    env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    proc = subprocess.run(["bash", str(script), str(tmp_path), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = ("core", "train_step", "pallas_tests", "pallas", "tiles", "chunk_sweep", "rest",
              "sampling")
    for stage in stages:
        assert f"== {stage}: exit 0" in proc.stdout
    # The stages run in priority order: the operator targets first.
    starts = [proc.stdout.index(f"== {s}: ") for s in stages]
    assert starts == sorted(starts)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["kernels_core_cpu.json", "kernels_pallas_cpu.json", "kernels_rest_cpu.json",
                     "kernels_sweep_cpu.json", "kernels_tiles_cpu.json", "log.txt",
                     "sampling_cpu.json", "train_step_cpu.json"]
    log = (tmp_path / "log.txt").read_text()
    assert "jax backend, version, devices: cpu" in log
    # The report comes last, from the stages' JSON: every section, every stage read.
    assert log.index("== report") > log.index("== sampling: exit 0")
    assert "missing: none; cut by their time limit: none" in log
    assert "## Issue 18.4" in log and "## Issue 17.5" in log and "\ntargets (" in log
    # The allocator's share that gpu_aot.py checks every compiled program against.
    import gpu_aot

    assert f"XLA_PYTHON_CLIENT_MEM_FRACTION={gpu_aot.MEMORY_FRACTION}\n" in log
    core = json.loads((tmp_path / "kernels_core_cpu.json").read_text())
    assert core["complete"] and {r["op"] for r in core["rows"]} == {"softmax", "lasad_chunked"}
    assert all(r["status"] == "ok" for r in core["rows"])
    assert core["rows"][0]["mode"] == "fwd_bwd"  # the target rows before forward-only ones
    pallas = json.loads((tmp_path / "kernels_pallas_cpu.json").read_text())
    # The core stage's softmax rows join the Pallas stage's speedups.
    assert {r["op"] for r in pallas["rows"]} == {"softmax", "lasad_pallas"}
    assert {r["op"] for r in pallas["speedups"]} == {"lasad_pallas"}
    sweep = json.loads((tmp_path / "kernels_sweep_cpu.json").read_text())
    assert {(r["chunk_size"], r["remat"]) for r in sweep["rows"]
            if r["op"] == "lasad_chunked"} == {
        (16, "inputs"), (16, "none"), (32, "inputs"), (32, "none")}
    # Then the Pallas split with float32 states, against the pallas stage's default ones.
    assert {(r["chunk_size"], r["state_dtype"]) for r in sweep["rows"]
            if r["op"] == "lasad_pallas"} == {(16, "float32"), (32, "float32")}
    assert "ops.pallas.chunked.state_storage at T = 64, chunk 16 (fwd_bwd): float32" in log
    tiles = json.loads((tmp_path / "kernels_tiles_cpu.json").read_text())
    assert tiles["complete"] and [r["status"] for r in tiles["rows"]] == ["ok", "ok"]
    train = json.loads((tmp_path / "train_step_cpu.json").read_text())
    # Size by size: softmax, then LASAD with the Pallas kernels, then with impl="auto".
    assert [(r["mixer"], r["impl"]) for r in train["rows"]] == [
        ("softmax", "auto"), ("lasad", "pallas"), ("lasad", "auto")]
    # Where the time goes: the chosen rows ran once more under the profiler, after they
    # were timed, and the report prints each (benchmarks/device_profile.py).
    sampling = json.loads((tmp_path / "sampling_cpu.json").read_text())
    profiled = [r for stage in (core, pallas, train, sampling) for r in stage["rows"]
                if "profile" in r]
    assert all(r["profile"].get("ops") for r in profiled), profiled
    assert {r.get("op", r.get("mixer")) for r in profiled} == {
        "lasad_chunked", "lasad_pallas", "lasad", "softmax"}
    assert all(r["mode"] == "fwd_bwd" and r["tokens"] == 64 for r in core["rows"] + pallas["rows"]
               if "profile" in r)
    assert len([r for r in train["rows"] if "profile" in r]) == 3
    assert log.count("    profile (host): kernels busy") >= 2 * len(profiled)  # stage + report
    # Beyond --check_tokens a row is checked against the float32 chunked form.
    long = [r for r in core["rows"] if r["op"] == "lasad_chunked" and r["tokens"] == 64]
    assert long and all(r["check"].startswith("chunked float32") for r in long)


# Stands in for python in device_check.sh: answers the backend query as a GPU host would,
# records every other command line (with the matmul precision it ran under), writes `{}`
# into the file its --out names, and fails with status 3 when its command names $FAIL.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [[ $1 == -c ]]; then echo "gpu 0.11.2 [CudaDevice(id=0)]"; exit 0; fi
echo "${JAX_DEFAULT_MATMUL_PRECISION:-default} $*" >> "$CALLS"
prev=
for arg in "$@"; do [[ $prev == --out ]] && echo "{}" > "$arg"; prev=$arg; done
[[ -n ${FAIL:-} && " $* " == *" $FAIL "* ]] && exit 3
exit 0
"""


@pytest.fixture
def fake_device(tmp_path):
    """device_check.sh as it runs on a GPU, with every python command recorded instead of
    run: `call(*args, fail=None)` returns (exit status, stdout, recorded command lines)."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    script = ROOT / "benchmarks" / "device_check.sh"

    def call(out, *args, fail=None):
        calls = tmp_path / f"calls_{out.name}.txt"
        env = dict(os.environ, PYTHON=str(python), CALLS=str(calls), FAIL=fail or "")
        proc = subprocess.run(["bash", str(script), str(out), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        lines = calls.read_text().splitlines() if calls.exists() else []
        return proc.returncode, proc.stdout + proc.stderr, lines

    return call


def test_device_check_runs_the_device_commands_it_promises(fake_device, tmp_path):
    """The GPU sizes are never run on CPU: the command lines of both device calls, read
    from a stand-in python. The first call runs its five stages in priority order and then
    the report; the pallas stage takes the core stage's cuDNN rows as its baseline."""
    out = tmp_path / "first"
    rc, log, calls = fake_device(out)
    assert rc == 0, log
    scripts = [c.split()[1] for c in calls]
    assert scripts == ["benchmarks/kernels.py", "benchmarks/train_step.py",
                       "benchmarks/kernels.py", "benchmarks/masked_probe.py",
                       "benchmarks/sampling.py", "benchmarks/report.py"], calls
    core, train, pallas, tiles, sampling, report = calls
    assert "--profile_tokens 16384" in core and f"--out {out}/kernels_core_gpu.json" in core
    assert "--steps 5" in train and "--pallas --profile" in train
    assert f"--baseline {out}/kernels_core_gpu.json" in pallas
    assert "--tokens 4096 16384 256 1024 --chunk_sizes 1024 2048 4096" in pallas
    assert "--hlo_check" in sampling and "--state_dtypes float32 bfloat16" in sampling
    assert report.endswith(f"benchmarks/report.py {out}")
    assert all(f"== {s}: skipped (this call runs core,train_step,pallas,tiles,sampling)" in log
               for s in ("pallas_tests", "chunk_sweep", "rest"))
    assert "--smoke" not in "".join(calls)

    # The second call: the device's own compiler under the Pallas tests, full precision.
    rc, log, calls = fake_device(tmp_path / "second", "--stages",
                                 "pallas_tests,chunk_sweep,rest")
    assert rc == 0, log
    tests, sweep, rest, report = calls
    assert tests.startswith("highest -m pytest -v -o addopts= -p no:cacheprovider")
    assert "-k not decays_of_one_over_16k and not read_the_sequence_in_place" in tests
    assert "--chunk_sizes 512 1024 2048 --pallas_chunk_sizes 1024 2048" in sweep
    assert "--shapes 8:64 1:128 8:128" in rest

    # Without the core stage in the call, the pallas stage times cuDNN itself.
    rc, log, calls = fake_device(tmp_path / "alone", "--stages", "pallas")
    assert rc == 0 and "--ops lasad_pallas softmax" in calls[0] and "--baseline" not in calls[0]
    # A call that leaves no JSON (the tests alone) has nothing to report, and passes.
    rc, log, calls = fake_device(tmp_path / "tests", "--stages", "pallas_tests")
    assert rc == 0 and len(calls) == 1 and "== report" not in log, log


def test_device_check_goes_on_after_a_failed_stage(fake_device, tmp_path):
    """One stage failing costs its own rows only: the later stages and the report still
    run, the stage's status is logged, and the call exits 1."""
    rc, log, calls = fake_device(tmp_path / "out", fail="benchmarks/train_step.py")
    assert rc == 1 and "== train_step: exit 3\n" in log
    assert len(calls) == 6 and "== sampling: exit 0" in log
    assert "== train_step: exit 3" in (tmp_path / "out" / "log.txt").read_text()


def test_device_check_refuses_bad_arguments(tmp_path):
    script = ROOT / "benchmarks" / "device_check.sh"
    for args, says in ((["--fast"], "--smoke"), (["--stages", "core,pallass"], "pallass"),
                       (["--stages"], "comma-separated")):
        bad = subprocess.run(["bash", str(script), str(tmp_path / "bad"), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and says in bad.stderr, (args, bad.stderr)
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "--severity=style", str(script)],
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout


def test_device_check_first_call_fits_one_device_call():
    """Without --stages the script runs the stages that decide the code and the targets,
    then its report, within one call of the device tool (600 s, 15 s left for the script's
    own start); the rest fit a second call, and both calls fit the session's 900 s of
    device time after the fastest machine start seen (30 s) with 60 s to spare for the
    script's own starts and the gap between the calls."""
    text = (ROOT / "benchmarks" / "device_check.sh").read_text()
    stages = text.split("all_stages=(")[1].split(")")[0].split()
    first = text.split("first_call=")[1].split()[0].split(",")
    limits = [int(x) for x in text.split("    limits=(")[2].split(")")[0].split()]
    report = int(text.split("report_limit=")[1].split()[0])
    by_stage = dict(zip(stages, limits))
    assert first == ["core", "train_step", "pallas", "tiles", "sampling"]
    first_call = sum(by_stage[s] for s in first) + report
    second_call = sum(by_stage[s] for s in stages if s not in first) + report
    assert first_call <= 585 and second_call <= 585
    assert 30 + first_call + second_call + 60 <= 900


@pytest.mark.slow
def test_mixer_ablation_runs_caches_and_summarises(tmp_path, capsys):
    import ablation

    # One mixer, two seeds, one step each (an evaluation at every step, a sample grid for
    # seed 0): the plumbing, not the training. Which seeds every mixer finished is
    # test_ablation_summary_keeps_only_seeds_every_mixer_finished's (no training there).
    args = ["--datasets", "digits", "--mixers", "lasad", "--seeds", "0", "1",
            "--steps", "digits=1", "--out_dir", str(tmp_path)]
    table = ablation.main(args)
    assert [(r["mixer"], r["seeds"]) for r in table] == [("lasad", 2)]
    assert all(0 < v < 5 for r in table for v in r["values"])  # uniform: 4.09 bits
    lasad = table[0]
    assert abs(lasad["std"] - float(np.std(lasad["values"], ddof=1))) < 1e-12
    assert [p.name for p in (tmp_path / "grids").iterdir()] == ["digits_lasad.png"]  # seed 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "grids.png").stat().st_size > 0
    assert "| digits | lasad |" in capsys.readouterr().out
    # A rerun finds every run cached and trains nothing.
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").iterdir()}
    assert ablation.main(args) == table
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").iterdir()} == before


@pytest.mark.slow
def test_figures_draws_op_scaling(tmp_path):
    import figures

    figures.main(["--docs_dir", str(tmp_path), "--json", str(tmp_path / "m.json")])
    assert (tmp_path / "op_scaling.png").stat().st_size > 0


def test_ablation_summary_keeps_only_seeds_every_mixer_finished(capsys):
    import ablation

    runs = [{"dataset": "shapes", "mixer": m, "seed": s, "final_val_ema": v}
            for m, s, v in [("lasad", 0, 1.0), ("linear", 0, 2.0), ("lasad", 1, 3.0),
                            ("lasad", 2, 5.0), ("linear", 2, 4.0)]]
    kept = ablation.complete_seeds(runs)
    assert sorted((r["mixer"], r["seed"]) for r in kept) == [
        ("lasad", 0), ("lasad", 2), ("linear", 0), ("linear", 2)]
    assert "shapes: seeds [1] are not finished" in capsys.readouterr().out
    table = {r["mixer"]: r for r in ablation.summarise(kept)}
    assert table["lasad"]["mean"] == 3.0 and table["linear"]["mean"] == 3.0
    assert abs(table["lasad"]["std"] - 2 ** 0.5 * 2) < 1e-12  # sd of (1, 5)


def test_ablation_summary_dates_what_measured_the_runs():
    """`--report_only` summarises cached runs: their date and device, not today's."""
    import ablation

    runs = [{"info": {"date": d, "device": "cpu", "cores": 2, "jax": j}}
            for d, j in (("2026-12-01", "0.10.2"), ("2026-12-03", "0.10.1"))]
    info = ablation.measured_by(runs, {"digits": 600})
    assert (info["date"], info["device"], info["cores"], info["jax"]) == (
        "2026-12-03", "cpu", 2, ["0.10.1", "0.10.2"])
    assert info["steps"] == {"digits": 600}
