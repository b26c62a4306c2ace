"""The operator benchmarks run end to end at tiny sizes (their `--smoke` modes) and write
what they promise: kernels.py, train_step.py, chunk_design.py, numerics.py and
masked_probe.py. Those over ~5 s on the 2-core machine are marked `slow`."""

from __future__ import annotations

import json
import pathlib
import sys

import kernels  # benchmarks/ (tests/benchmarks/conftest.py puts it on the path)
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_kernels_smoke_checks_times_and_reports_speedups(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    result = kernels.main(["--smoke", "--out", str(out)])
    rows = result["rows"]
    assert {(r["op"], r["mode"], r["tokens"]) for r in rows} == {
        (op, mode, t) for op in kernels.OPS for mode in ("fwd", "fwd_bwd") for t in (16, 64)}
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["tflops"] > 0 for r in rows)
    # Every LASAD row was checked against the float32 reference before it was timed: bf16
    # rounding only.
    lasad = [r for r in rows if r["op"] != "softmax"]
    assert all(r["check"] == "reference" and 0 < r["err"] < 1e-2 for r in lasad)
    assert {r["op"] for r in result["speedups"]} == {"lasad_chunked", "lasad_pallas"}
    saved = json.loads(out.read_text())
    assert saved["info"]["dtype"] == "bfloat16" and saved["complete"]
    assert "| lasad_chunked | C=16 remat=" in capsys.readouterr().out
    # Causal attention FLOPs: 2 * B * H * T^2 * (Dk + Dv) / 2 forward, 3.5x with backward.
    assert kernels.attention_flops(16, 2, 8, "fwd", batch=3) == 3 * 2 * 2 * 16 * 16 * 16 / 2
    assert kernels.attention_flops(16, 2, 8, "fwd_bwd") == 3.5 * 2 * 2 * 16 * 16 * 16 / 2


@pytest.mark.slow
def test_kernels_sweeps_chunked_design_choices_and_long_rows_check_against_chunked(tmp_path):
    result = kernels.main(["--smoke", "--ops", "lasad_chunked", "--tokens", "64",
                           "--modes", "fwd_bwd", "--chunk_sizes", "16", "32", "--remats",
                           "inputs", "none", "--check_tokens", "16",
                           "--out", str(tmp_path / "k.json")])
    rows = result["rows"]
    assert [(r["chunk_size"], r["remat"]) for r in rows] == [
        (16, "inputs"), (16, "none"), (32, "inputs"), (32, "none")]
    # Beyond --check_tokens the check is the float32 chunked form at another chunk size.
    assert all(r["status"] == "ok" and r["check"].startswith("chunked float32")
               for r in rows)


@pytest.mark.slow
def test_kernels_does_not_count_a_wrong_kernel(tmp_path, monkeypatch):
    right = kernels.lasad_fn

    def wrong(name, *a, **kw):  # a kernel that forgot part of its output
        fn = right(name, *a, **kw)
        return (lambda *x: fn(*x) * 0.9) if name == "lasad_pallas" else fn

    monkeypatch.setattr(kernels, "lasad_fn", wrong)
    result = kernels.main(["--smoke", "--tokens", "16", "--out", str(tmp_path / "k.json")])
    pallas = [r for r in result["rows"] if r["op"] == "lasad_pallas"]
    assert all(r["status"].startswith("mismatch") and r["err"] > 0.05 for r in pallas)
    assert not any("ms" in r for r in pallas)  # not timed: no device time on a wrong kernel
    assert {r["op"] for r in result["speedups"]} == {"lasad_chunked"}  # wrong one left out


def test_softmax_rows_a_cut_baseline_lacks_are_timed_here(tmp_path, capsys):
    """The core stage's limit may fall before its longest softmax rows: the pallas stage,
    given its JSON as --baseline, times the lengths it lacks and only those."""
    path = tmp_path / "core.json"  # as if cut after the softmax row at T = 16
    kernels.main(["--smoke", "--ops", "softmax", "--modes", "fwd", "--tokens", "16",
                  "--out", str(path)])
    capsys.readouterr()
    result = kernels.main(["--smoke", "--ops", "lasad_chunked", "--modes", "fwd",
                           "--baseline", str(path), "--out", str(tmp_path / "k.json")])
    soft = sorted((r["tokens"], "source" in r) for r in result["rows"] if r["op"] == "softmax")
    assert soft == [(16, True), (64, False)]  # 16 from the baseline, 64 timed here
    assert "--baseline lacks 1 softmax row(s): timed here" in capsys.readouterr().out
    assert {r["tokens"] for r in result["speedups"]} == {16, 64}


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_kernels_names_a_bad_baseline(tmp_path, content):
    path = tmp_path / "softmax.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match="--baseline .*softmax.json: not a kernels.py result"):
        kernels.main(["--smoke", "--baseline", str(path), "--out", str(tmp_path / "k.json")])


def test_kernels_names_a_profile_length_it_does_not_run(tmp_path):
    with pytest.raises(SystemExit, match=r"--profile_tokens \[100\] are not among --tokens"):
        kernels.main(["--smoke", "--profile_tokens", "64", "100",
                      "--out", str(tmp_path / "k.json")])
    assert not (tmp_path / "k.json").exists()  # refused before anything ran


@pytest.mark.slow
def test_train_step_smoke_times_both_mixers(tmp_path, capsys):
    import train_step

    out = tmp_path / "train.json"
    result = train_step.main(["--smoke", "--pallas", "--out", str(out)])
    # Size by size: softmax, then LASAD with the Pallas kernels, then with impl="auto".
    assert [(r["mixer"], r["impl"]) for r in result["rows"]] == [
        ("softmax", "auto"), ("lasad", "pallas"), ("lasad", "auto")]
    rows = {r["mixer"]: r for r in result["rows"] if r["impl"] == "auto"}
    for r in rows.values():
        assert r["step_ms"] > 0 and r["compile_s"] > 0 and r["tokens"] == 2 * 16
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / (r["step_ms"] / 1e3))
        assert 0 < r["loss"] < 2 * np.log(32)  # random codes over a 32-token vocabulary
        assert r["mfu"] is None  # no known peak on CPU
    # 6N counts the matmul weights only: the two embedding tables are lookups.
    assert rows["lasad"]["flops_6n_per_token"] == 6 * rows["lasad"]["matmul_params"]
    # Softmax mixing, PaLM's count: 12 * layers * dim * T (T = 16 slots), fwd + bwd.
    assert rows["softmax"]["attn_flops_per_token"] == 12 * 1 * 32 * 16
    assert sorted(r["impl"] for r in result["ratios"]) == ["auto", "pallas"]
    assert all(r["lasad_over_softmax"] > 0 for r in result["ratios"])
    # The Pallas step trains the same model: the same first loss (interpret mode on CPU).
    pallas = result["rows"][1]
    assert pallas["step_ms"] > 0 and pallas["loss"] == pytest.approx(rows["lasad"]["loss"],
                                                                      rel=1e-3)
    assert json.loads(out.read_text())["complete"]
    assert "| lasad | auto | 64 | 2 |" in capsys.readouterr().out


def test_train_step_profiles_after_every_size_is_timed(tmp_path, capsys):
    """A time limit must cut profiles, not the 512 px rows: each row is profiled (from a
    state built again) only once all sizes are timed. And a size whose every lowering
    failed compiles nothing instead of stopping the stage."""
    import train_step

    assert train_step.compile_together([]) == []
    result = train_step.main(["--smoke", "--mixers", "softmax", "--rows", "4:2", "4:1",
                              "--profile", "--out", str(tmp_path / "t.json")])
    assert [(r["batch"], r["status"]) for r in result["rows"]] == [(2, "ok"), (1, "ok")]
    assert all(r["profile"].get("ops") for r in result["rows"]), result["rows"]
    out = capsys.readouterr().out
    assert out.index("softmax  auto     64 px batch   1") < out.index("profile: softmax")


def test_device_scripts_import_no_package_the_gpu_image_lacks():
    """The GPU machine has no clu, grain, ml_collections or tensorflow: the scripts that
    device_check.sh runs there must not need them."""
    import subprocess

    code = ("import sys; sys.path.insert(0, 'benchmarks'); "
            "import train_step, kernels, sampling, masked_probe, report; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('clu', 'grain', 'ml_collections', 'tensorflow')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_chunk_design_runs(tmp_path):
    import chunk_design

    out = tmp_path / "design.json"
    rows = chunk_design.main(["--tokens", "64", "--widths", "4", "--heads", "2", "--dim", "4",
                              "--rounds", "2", "--min_seconds", "0", "--out", str(out)])
    assert {r["test"] for r in rows} == set(chunk_design.TESTS)
    steps = [r["chunks_per_step"] for r in rows if r["test"] == "steps"]
    assert steps == [1, 2, 4, 0]
    assert all(r["fwd_bwd_ms"] > 0 for r in rows)
    assert all(len(r["rounds_ms"]) == 2 and r["fwd_bwd_ms"] == min(r["rounds_ms"])
               for r in rows if r["test"] != "smoothing")
    assert all(r["rel_err_vs_toeplitz"] < 1e-5 for r in rows if r["test"] == "smoothing")
    assert json.loads(out.read_text())["rows"] == rows


@pytest.mark.slow
def test_numerics_reports_bf16_rounding_only(tmp_path):
    import numerics

    out = tmp_path / "numerics.json"
    numerics.main(["--tokens", "16", "--heads", "2", "--dim", "8", "--pallas",
                   "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["form"]) for r in rows] == [
        ("lasad", "chunked"), ("lasad_row", "chunked"), ("linear_1d", "chunked"),
        ("linear", "chunked"), ("lasad", "pallas:float32"), ("lasad", "pallas:bfloat16")]
    assert all(0 < r["max_err_over_max_ref"] < 2.0**-7 for r in rows)
    for r in rows:
        grads = [r[n] for n in ("dq", "dk", "dv", "d_row_decay", "d_col_decay")
                 if r[n] is not None]
        assert all(0 < g < 2.0**-6 for g in grads), r
    assert rows[3]["d_row_decay"] is None and rows[3]["d_col_decay"] is None


def test_masked_probe_runs(tmp_path):
    """The tile sweep of device_check.sh's `tiles` stage: every setting checked against
    the XLA form and timed; a setting the kernels refuse is recorded, not fatal."""
    import masked_probe

    rows = masked_probe.main(["--smoke", "--tiles", "16:16:4:2", "16:16:8:3", "16:16:3:2",
                              "--out", str(tmp_path / "probe.json")])
    assert [(r["num_warps"], r["num_stages"]) for r in rows] == [(4, 2), (8, 3), (3, 2)]
    assert [r["status"] for r in rows[:2]] == ["ok", "ok"]
    assert all(r["err_vs_chunked"] < 1e-2 and r["grad_err_vs_chunked"] < 2e-2 and r["ms"] > 0
               for r in rows[:2])
    assert rows[0]["vs_first"] == 1.0
    assert rows[2]["status"].startswith("unavailable: ValueError: num_warps must be one of")
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["complete"] and saved["rows"] == rows


def test_masked_probe_checks_the_gradients_the_tiles_also_drive(tmp_path, monkeypatch):
    """A setting whose forward is right and whose backward is not is "wrong", never a
    default: here the kernel's gradients come out 1.5 times too large."""
    import jax
    import masked_probe

    right = masked_probe.masked.intra_attention

    def wrong_backward(*args, **kwargs):
        o = right(*args, **kwargs)
        return o + 0.5 * (o - jax.lax.stop_gradient(o))  # the same values, other gradients

    monkeypatch.setattr(masked_probe.masked, "intra_attention", wrong_backward)
    (row,) = masked_probe.main(["--smoke", "--tiles", "16:16:4:2",
                                "--out", str(tmp_path / "probe.json")])
    assert row["err_vs_chunked"] < 1e-2 and row["grad_err_vs_chunked"] > 0.3
    assert row["status"] == "wrong"


def test_masked_probe_smoke_keeps_explicit_flags(tmp_path):
    """`--smoke` sets tiny defaults only: a shape given is used (here refused: 15 tokens
    are no class slot plus a square grid's first tokens)."""
    import masked_probe

    with pytest.raises(SystemExit, match="TOKENS must be a square"):
        masked_probe.main(["--smoke", "--shapes", "2:15", "--out", str(tmp_path / "p.json")])
