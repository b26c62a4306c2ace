"""The benchmark scripts run end to end (tiny sizes) and write what they promise."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import op_scaling  # noqa: E402


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


def test_chunk_design_runs(tmp_path):
    import chunk_design

    out = tmp_path / "design.json"
    chunk_design.main(["--tokens", "64", "--widths", "4", "--heads", "2", "--dim", "4",
                       "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["test"] for r in rows} == {"remat", "smoothing"}
    assert all(r["rel_err_vs_toeplitz"] < 1e-5 for r in rows if r["test"] == "smoothing")


def test_numerics_reports_bf16_rounding_only(tmp_path):
    import numerics

    out = tmp_path / "numerics.json"
    numerics.main(["--tokens", "16", "--heads", "2", "--dim", "8", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4
    assert all(0 < r["max_err_over_max_ref"] < 2.0**-7 for r in rows)


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


def test_demo_ablation_runs(tmp_path, capsys):
    import demo_ablation

    out = tmp_path / "ablation.json"
    rows = demo_ablation.main(["--steps", "2", "--runs", "mixer=linear", "--out", str(out)])
    assert [r["run"] for r in rows] == ["mixer=linear"]
    assert 0 < rows[0]["val_bits"] < 5  # uniform over 17 levels is 4.09 bits
    assert json.loads(out.read_text())["rows"][0]["steps"] == 2
    assert "| mixer=linear |" in capsys.readouterr().out


def test_kernels_benchmark_runs_and_reports_speedups(tmp_path):
    import kernels

    out = tmp_path / "kernels.json"
    result = kernels.main(["--tokens", "16", "--dims", "8", "--heads", "2", "--softmax_impl",
                           "xla", "--repeats", "1", "--min_seconds", "0", "--out", str(out)])
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert {(r["op"], r["mode"]) for r in ok} >= {("lasad_chunked", "fwd"), ("softmax", "fwd"),
                                                    ("lasad_chunked", "fwd_bwd")}
    assert all(r["ms"] > 0 and r["tflops"] > 0 for r in ok)
    # Causal attention FLOPs: 2 * H * T^2 * (Dk + Dv) / 2 forward.
    assert kernels.attention_flops(16, 2, 8, "fwd") == 2 * 2 * 16 * 16 * 16 / 2
    assert "lasad_chunked" in {r["op"] for r in result["speedups"]}
    saved = json.loads(out.read_text())
    assert saved["info"]["dtype"] == "bfloat16" and saved["complete"]
    # The Pallas rows (interpret mode here) are checked against the chunked form's results.
    pallas = [r for r in result["rows"] if r["op"] == "lasad_pallas"]
    assert {r["mode"] for r in pallas} == {"fwd", "fwd_bwd"}
    assert all(r["status"] == "ok" and r["err_vs_chunked"] < 1e-3 for r in pallas)


def test_kernels_benchmark_does_not_count_a_wrong_kernel(tmp_path, monkeypatch):
    import kernels

    right = kernels.operator

    def wrong(name, width, softmax_impl):  # a Pallas kernel that forgot part of the output
        fn = right(name, width, softmax_impl)
        return (lambda *a: fn(*a) * 0.9) if name == "lasad_pallas" else fn

    monkeypatch.setattr(kernels, "operator", wrong)
    result = kernels.main(["--tokens", "16", "--dims", "8", "--heads", "2", "--softmax_impl",
                           "xla", "--repeats", "1",
                           "--min_seconds", "0", "--out", str(tmp_path / "k.json")])
    pallas = [r for r in result["rows"] if r["op"] == "lasad_pallas"]
    assert all(r["status"].startswith("mismatch") and r["err_vs_chunked"] > 0.05
               for r in pallas)
    assert {r["op"] for r in result["speedups"]} == {"lasad_chunked"}  # wrong one left out


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_kernels_benchmark_names_a_bad_baseline(tmp_path, content):
    import kernels

    path = tmp_path / "softmax.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match="--baseline .*softmax.json: not a kernels.py result"):
        kernels.main(["--tokens", "16", "--dims", "8", "--baseline", str(path),
                      "--out", str(tmp_path / "k.json")])


def test_device_check_script_runs_every_stage(tmp_path):
    """The one command prepared for a lent GPU, at tiny sizes on CPU: each stage runs and
    leaves its log and JSON (at most 8 files, the device tool's limit on what comes back)."""
    script = ROOT / "benchmarks" / "device_check.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(script), str(tmp_path), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("tests", "softmax", "masked_probe", "kernels", "sampling"):
        assert f"== {stage}: exit 0" in proc.stdout
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["device.txt", "kernels_cpu.json", "log.txt", "masked_probe_cpu.json",
                     "sampling_cpu.json", "softmax_cpu.json"]
    kernels = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert kernels["complete"]
    # The softmax rows timed by their own stage join the LASAD stage's speedups.
    assert {r["op"] for r in kernels["rows"]} == {"softmax", "lasad_chunked", "lasad_pallas"}
    assert {r["op"] for r in kernels["speedups"]} == {"lasad_chunked", "lasad_pallas"}
    bad = subprocess.run(["bash", str(script), str(tmp_path), "--fast"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--smoke" in bad.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "--severity=style", str(script)],
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout


def test_mixer_ablation_runs_caches_and_summarises(tmp_path, capsys):
    import ablation

    args = ["--datasets", "digits", "--mixers", "linear", "lasad", "--seeds", "0", "1",
            "--steps", "digits=2", "--out_dir", str(tmp_path)]
    table = ablation.main(args)
    assert [(r["mixer"], r["seeds"]) for r in table] == [("lasad", 2), ("linear", 2)]
    assert all(0 < v < 5 for r in table for v in r["values"])  # uniform: 4.09 bits
    lasad = table[0]
    assert abs(lasad["std"] - float(np.std(lasad["values"], ddof=1))) < 1e-12
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "digits_lasad.png", "digits_linear.png"]  # seed 0 only
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "grids.png").stat().st_size > 0
    assert "| digits | lasad |" in capsys.readouterr().out
    # A rerun finds every run cached and trains nothing.
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").iterdir()}
    assert ablation.main(args) == table
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").iterdir()} == before


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
