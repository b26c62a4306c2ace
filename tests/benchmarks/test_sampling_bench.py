"""The decoding benchmarks run end to end at tiny sizes and report what they promise:
benchmarks/sampling.py (the GPU sampling comparison), benchmarks/decode_step.py and the
decode-memory figure."""

from __future__ import annotations

import argparse
import json

import pytest


@pytest.mark.slow
def test_sampling_smoke_reports_every_row(tmp_path, capsys):
    import sampling

    out = tmp_path / "sampling.json"
    result = sampling.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["complete"] and result["info"]["backend"] == "cpu"
    rows = {(r["grid"], r["mixer"]): r for r in result["rows"]}
    assert {r["state_dtype"] for r in result["rows"]} == {"float32"}
    assert set(rows) == {(g, m) for g in (4, 6) for m in ("lasad", "softmax")}
    layers, heads, head_dim, batch_rows = 2, 2, 16, 4  # batch 2, doubled by guidance
    for (grid, mixer), r in rows.items():
        assert r["rows"] == batch_rows and r["hlo_problems"] == []
        assert r["compile_s"] > 0 and r["ms_per_batch"] > 0
        assert r["images_per_s"] == pytest.approx(2 / (r["ms_per_batch"] / 1e3))
        # float32 model: softmax keeps keys and values of 1 + grid^2 slots per layer.
        kv = 4 * 2 * layers * batch_rows * heads * (1 + grid * grid) * head_dim + 4
        assert r["kv_cache_bytes"] == kv
        if mixer == "softmax":
            assert r["state_bytes"] == kv and "quarter_ratio" not in r
        else:  # one state per column, keys and values of two rows and the class slot
            per_head = grid * head_dim**2 + (2 * grid + 1) * 2 * head_dim
            assert r["state_bytes"] == 4 * layers * batch_rows * heads * per_head + 4 * 3
            assert len(r["quarter_ms_per_token"]) == 4 and r["quarter_ratio"] > 0
    assert [v["grid"] for v in result["verdict"]] == [4, 6]
    assert all(v["speedup"] > 0 and v["target"] is None for v in result["verdict"])
    printed = capsys.readouterr().out
    assert "| tiny | 6x6 | lasad | float32 xla | 2 |" in printed and "LASAD" in printed


@pytest.mark.slow
def test_sampling_state_dtypes_add_bfloat16_state_rows(tmp_path):
    """`--state_dtypes float32 bfloat16`: after the float32 comparison of a grid, the LASAD
    model again with bf16 column states (half their bytes; keys and values stay in the
    compute dtype), with its own verdict entry. No HLO check here: on CPU, XLA widens bf16
    buffers around each update, which the check rightly reports (docs/decoding.md)."""
    import sampling

    tiny = [a for a in sampling.SMOKE if a != "--hlo_check"]
    result = sampling.main(tiny + ["--grids", "4", "--quarters", "--state_dtypes", "float32",
                                   "bfloat16", "--out", str(tmp_path / "s.json")])
    order = [(r["mixer"], r["state_dtype"]) for r in result["rows"]]
    assert order == [("softmax", "float32"), ("lasad", "float32"), ("lasad", "bfloat16")]
    f32, bf16 = result["rows"][1], result["rows"][2]
    layers, rows, heads, w, d = 2, 4, 2, 4, 16
    cols = layers * rows * heads * w * d * d
    assert f32["state_bytes"] - bf16["state_bytes"] == 2 * cols  # 4 -> 2 bytes each
    assert [(v["state_dtype"], v["speedup"] > 0) for v in result["verdict"]] == [
        ("float32", True), ("bfloat16", True)]


def test_sampling_decode_impls_add_fused_step_rows(tmp_path):
    """`--decode_impls xla pallas`: LASAD with the XLA step and with the fused kernel next
    to softmax at each grid, each with its own verdict entry. The interpreter's program (CPU)
    is not HLO-checked: its grid loop carries the whole state (benchmarks/gpu_aot.py
    checks the GPU program)."""
    import sampling

    result = sampling.main(sampling.SMOKE + ["--grids", "4", "--decode_impls", "pallas", "xla",
                                             "--out", str(tmp_path / "s.json")])
    order = [(r["mixer"], r["decode_impl"]) for r in result["rows"]]
    assert order == [("softmax", "auto"), ("lasad", "pallas"), ("lasad", "xla")]
    assert [r.get("hlo_problems") for r in result["rows"]] == [[], None, []]
    assert [v["decode_impl"] for v in result["verdict"]] == ["pallas", "xla"]
    # The quarters are measured once per size, on its first LASAD row; every LASAD row's
    # verdict carries that ratio.
    assert ["quarter_ratio" in r for r in result["rows"]] == [False, True, False]
    ratio = result["rows"][1]["quarter_ratio"]
    assert [v["quarter_ratio"] for v in result["verdict"]] == [ratio, ratio]


def test_a_wrong_fused_step_is_not_timed_and_a_failed_row_is_kept(tmp_path, monkeypatch,
                                                                    capsys):
    """A fused step that disagrees with the XLA step is recorded as a mismatch and not
    timed (the model's zero output head would hide it from `generate`); a row whose
    compile fails is recorded; the rows after both still run."""
    import sampling

    tiny = argparse.Namespace(vocab=64, classes=4, layers=2, heads=2, dim=32, dtype="float32")
    for state_dtype in sampling.FUSED_TOL:  # the real kernel agrees, with either states
        model = sampling.build(tiny, "tiny", 4, "lasad", state_dtype, decode_impl="pallas")
        err = sampling.check_fused_step(model.cfg, state_dtype)
        assert err < sampling.FUSED_TOL[state_dtype] / 4, (state_dtype, err)
    monkeypatch.setattr(sampling, "check_fused_step", lambda cfg, state_dtype: 0.3)
    monkeypatch.setattr(sampling, "FUSED_CHECKED", {})  # checked once per head size
    real = sampling.measure

    def measure(args, preset, grid, mixer, state_dtype, decode_impl):
        if mixer == "softmax" and grid == 6:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return real(args, preset, grid, mixer, state_dtype, decode_impl)

    monkeypatch.setattr(sampling, "measure", measure)
    result = sampling.main(sampling.SMOKE + ["--decode_impls", "pallas", "xla", "--quarters",
                                             "--out", str(tmp_path / "s.json")])
    status = [(r["grid"], r["mixer"], r["decode_impl"], r["status"][:8], "ms_per_batch" in r)
              for r in result["rows"]]
    assert status == [
        (4, "softmax", "auto", "ok", True), (4, "lasad", "pallas", "mismatch", False),
        (4, "lasad", "xla", "ok", True), (6, "softmax", "auto", "failed: ", False),
        (6, "lasad", "pallas", "mismatch", False), (6, "lasad", "xla", "ok", True)]
    assert result["rows"][1]["status"] == (
        "mismatch: the fused step is 3.00e-01 from the XLA step")
    assert [(v["grid"], v["decode_impl"]) for v in result["verdict"]] == [(4, "xla"), (6, "xla")]
    assert "| tiny | 6x6 | softmax | float32 auto | failed: RuntimeError" in capsys.readouterr().out


def test_sampling_fails_on_hlo_problems(tmp_path, monkeypatch, capsys):
    import sampling

    monkeypatch.setattr(sampling, "loop_problems",
                        lambda text, guarded, movable=0: ["body: %copy.1 copies"])
    with pytest.raises(SystemExit, match="HLO check found copies"):
        sampling.main(["--smoke", "--grids", "4", "--mixers", "lasad", "--quarters",
                       "--out", str(tmp_path / "s.json")])
    assert "HLO: body: %copy.1 copies" in capsys.readouterr().out


def test_sampling_names_a_profile_grid_it_does_not_run(tmp_path):
    import sampling

    with pytest.raises(SystemExit, match=r"--profile_grids \[16\] are not among --grids"):
        sampling.main(["--smoke", "--profile_grids", "16", "--out", str(tmp_path / "s.json")])
    assert not (tmp_path / "s.json").exists()


def test_sampling_verdict_applies_the_targets():
    import sampling

    rows = [dict(preset="L", grid=g, mixer=m, state_dtype="float32", images_per_s=ips, **extra)
            for g, m, ips, extra in [(16, "lasad", 10.0, {"quarter_ratio": 1.05}),
                                     (16, "softmax", 9.0, {}),
                                     (32, "lasad", 10.0, {"quarter_ratio": 1.05}),
                                     (32, "softmax", 6.0, {}),
                                     (24, "lasad", 10.0, {"quarter_ratio": 1.3}),
                                     (24, "softmax", 1.0, {})]]
    got = {v["grid"]: v for v in sampling.verdict(rows)}
    assert got[16]["met"] and got[16]["speedup"] == pytest.approx(10 / 9)
    assert got[32]["met"] is False  # 1.67x < 2x
    assert got[24]["met"] is False  # 10x, but the last quarter is 1.3x slower than the first
    # A size whose quarters were not measured (a time limit) is not called met.
    unmeasured = [{k: v for k, v in r.items() if k != "quarter_ratio"} for r in rows[:2]]
    (entry,) = sampling.verdict(unmeasured)
    assert entry["met"] is None and entry["speedup"] == pytest.approx(10 / 9)


@pytest.mark.slow
def test_decode_step_reports_state_sizes_and_bf16_error(tmp_path):
    import decode_step

    out = tmp_path / "decode.json"
    decode_step.main(["--widths", "2", "--rows", "2", "3", "--batch", "1", "--heads", "2",
                      "--dim", "4", "--min_seconds", "0", "--state_dtypes", "float32",
                      "bfloat16", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["variant"] for r in rows} == {"lasad", "lasad_row", "linear_1d", "linear"}
    assert {(r["rows"], r["state_dtype"]) for r in rows} == {
        (n, d) for n in (2, 3) for d in ("float32", "bfloat16")}
    for r in rows:
        assert r["us_per_token"] > 0
        if r["state_dtype"] == "float32":
            assert r["err_vs_float32_state"] == 0
        else:
            assert 0 < r["err_vs_float32_state"] < 0.05
    lasad = next(r for r in rows if r["variant"] == "lasad" and r["state_dtype"] == "float32")
    # w Dk Dv + (2 w + 1)(Dk + Dv) float32 numbers per head, two heads, and the position.
    assert lasad["state_bytes"] == 4 * 2 * (2 * 4 * 4 + (2 * 2 + 1) * 8) + 4


@pytest.mark.slow
def test_decode_memory_figure_is_the_state_formula(tmp_path):
    """LASADGen-L (bf16 compute): per layer and head a float32 state per grid column and
    the bf16 keys and values of two grid rows and the class slot, plus int32 counters;
    softmax: bf16 keys and values of every slot."""
    import figures

    rows = figures.main(["--docs_dir", str(tmp_path), "--json", str(tmp_path / "m.json"),
                         "--figures", "decode_memory"])
    layers, heads, d = 24, 16, 64
    for r in rows:
        w = r["grid"]
        lasad = layers * heads * (4 * w * d * d + 2 * (2 * w + 1) * 2 * d)
        assert r["lasad"] == lasad + 4 * (layers + 1)
        assert r["softmax"] == 2 * 2 * layers * heads * (1 + w * w) * d + 4
        assert r["per_token"]["lasad"] < r["per_token"]["softmax"]
    assert (tmp_path / "decode_memory.png").stat().st_size > 0
    assert not (tmp_path / "op_scaling.png").exists()
