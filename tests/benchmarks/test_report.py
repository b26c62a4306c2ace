"""benchmarks/report.py: the verdicts it gives for rows whose answers are known."""

from __future__ import annotations

import json

import pytest
import report  # benchmarks/ (tests/benchmarks/conftest.py puts it on the path)
from device_profile import Event, summarize


def _write(folder, name: str, rows: list[dict], complete: bool = True) -> None:
    info = {"backend": "gpu", "device": "NVIDIA H200", "date": "2026-12-06", "jax": "0.11.2"}
    (folder / name).write_text(json.dumps({"info": info, "complete": complete, "rows": rows}))


def _kernel(op: str, tokens: int, ms: float, **extra) -> dict:
    row = dict(op=op, tokens=tokens, ms=ms, batch=1, dim=64, mode="fwd_bwd", status="ok",
               chunk_size=None if op == "softmax" else 1024, remat="inputs", state_pass="scan")
    return {**row, **extra}


@pytest.fixture
def run(tmp_path):
    """A device_check folder: the operator meets two targets, misses one, and one length
    has only a LASAD row that failed its check; the 256 px step meets its target with the
    Pallas kernels only; L at 512 px samples 2.4x faster with the fused step only."""
    _write(tmp_path, "kernels_core_gpu.json", [
        _kernel("lasad_chunked", 256, 0.20), _kernel("softmax", 256, 0.17),  # 1.18x: met
        _kernel("lasad_chunked", 1024, 0.40), _kernel("softmax", 1024, 0.28),
        _kernel("lasad_chunked", 4096, 0.50), _kernel("softmax", 4096, 0.68),  # 0.74x: missed
        _kernel("lasad_chunked", 16384, 0.01, status="mismatch: 1e-1"),  # a wrong kernel
        _kernel("softmax", 16384, 5.0),
        _kernel("lasad_chunked", 1024, 0.01, remat="none"),  # not a choice auto has
        _kernel("lasad_chunked", 1024, 0.30, batch=8), _kernel("softmax", 1024, 0.60, batch=8),
    ])
    _write(tmp_path, "kernels_pallas_gpu.json", [
        _kernel("lasad_pallas", 1024, 0.25, chunk_size=2048),  # 0.89x: met, and the choice
    ])
    train = dict(image_px=256, tokens_per_s=1.0, mfu=0.3, grid=16, batch=64)
    _write(tmp_path, "train_step_gpu.json", [
        dict(train, mixer="softmax", impl="auto", step_ms=100.0),
        dict(train, mixer="lasad", impl="pallas", step_ms=95.0, profile=dict(
            where="/device:GPU:0", **summarize([Event("custom-call.7", "intra_fwd", 0, 6e7),
                                                Event("fusion.3", "loop_fusion", 7e7, 2e7)],
                                               wall_ms=95.0))),
        dict(train, mixer="lasad", impl="auto", step_ms=130.0),
        dict(mixer="lasad", impl="pallas", grid=32, image_px=512, batch=16,
             status="failed: XlaRuntimeError: RESOURCE_EXHAUSTED"),
    ], complete=False)
    sample = dict(preset="L", grid=32, state_dtype="float32")
    _write(tmp_path, "sampling_gpu.json", [
        dict(sample, mixer="softmax", decode_impl="auto", images_per_s=5.0),
        dict(sample, mixer="lasad", decode_impl="pallas", images_per_s=12.0, quarter_ratio=1.3),
        dict(sample, mixer="lasad", decode_impl="xla", images_per_s=6.0),
        dict(sample, mixer="lasad", decode_impl="pallas", state_dtype="bfloat16",
             status="mismatch: the fused step is 3.10e-01 from the XLA step"),
    ])
    return tmp_path


def _aot(path) -> str:
    """gpu_aot.py's rows for three of the measured programs: 1.0, 10 and 0.1 ms of bytes
    at an H200's 4.8 TB/s."""
    path.write_text(json.dumps({
        "ops": [dict(tokens=4096, impl="chunked", chunk_size=1024, bytes=4.8e9)],
        "train": [dict(mixer="lasad", impl="pallas", grid=16, batch=64, bytes=4.8e10)],
        "decode": [dict(mixer="lasad", preset="L", grid=32, state_dtype="float32",
                        decode_impl="pallas", bytes_per_token=4.8e8)]}))
    return str(path)


def test_report_gives_each_target_its_verdict(run, capsys):
    result = report.main([str(run), "--out", str(run / "report.json"),
                          "--aot", _aot(run / "aot.json")])
    operator = {(r["batch"], r["tokens"]): r for r in result["operator"]}
    assert [operator[(1, t)]["verdict"] for t in (256, 1024, 4096, 16384)] == [
        "met", "met", "MISSED", "not measured"]
    assert operator[(1, 1024)]["lasad"] == "pallas C=2048"
    assert operator[(1, 256)]["ratio"] == pytest.approx(0.20 / 0.17)
    assert operator[(8, 1024)]["verdict"] == "no target"  # reported, as the issue asks
    assert operator[(8, 1024)]["ratio"] == pytest.approx(0.5)
    steps = {r["impl"]: r for r in result["train_step"]}
    assert steps["pallas"]["verdict"] == "met" and steps["auto"]["verdict"] == "MISSED"
    speed = {r["decode_impl"]: r for r in result["sampling"]}
    assert speed["pallas"]["speedup"] == pytest.approx(2.4)
    assert (speed["pallas"]["verdict"], speed["xla"]["verdict"]) == ("met", "MISSED")
    assert [q["verdict"] for q in result["quarters"]] == ["MISSED"]  # 1.3 > 1.1, once a size
    # Per target the size's best row counts: operator 2 met, 1 missed, 1 not measured; the
    # step met at 256 px (Pallas), not measured at 512; L at 512 px met (fused step), its
    # quarters missed; the other five sampler sizes not measured, speed and quarters.
    assert (result["missed"], result["not_measured"]) == (2, 1 + 1 + 5 + 5)
    assert result["missing"] == ["kernels_tiles", "kernels_sweep", "kernels_rest"]
    assert result["cut"] == ["train_step"]
    # AUTO_TABLE: the fastest checked row per T at the target shape.
    assert [(r["max_tokens"], r["impl"], r["chunk_size"]) for r in result["auto_table"]] == [
        (256, "chunked", 1024), (1024, "pallas", 2048), (None, "chunked", 1024)]
    decode = {(r["decode_impl"], r["state_dtype"]): r["over_default"] for r in result["decode"]}
    assert decode[("pallas", "float32")] == pytest.approx(2.0)
    # Byte floors where gpu_aot.py compiled the same program, none elsewhere.
    assert operator[(1, 4096)]["floor_ms"] == pytest.approx(1.0)
    assert operator[(1, 256)]["floor_ms"] is None and "floor_ms" not in operator[(8, 1024)]
    assert steps["pallas"]["floor_ms"] == pytest.approx(10.0) and steps["auto"]["floor_ms"] is None
    assert speed["pallas"]["floor_ms"] == pytest.approx(0.1)
    out = capsys.readouterr().out
    # Rows that ran but were not timed are named, whatever their stage.
    assert sorted((r["stage"], r["status"][:8]) for r in result["not_timed"]) == [
        ("kernels_core", "mismatch"), ("sampling", "mismatch"), ("train_step", "failed: ")]
    assert ("not timed: train step, lasad (pallas), 512 px batch 16 (failed: "
            "XlaRuntimeError: RESOURCE_EXHAUSTED)") in out
    assert ("not timed: sampling, L 32x32 lasad (bfloat16 states, pallas step) (mismatch: "
            "the fused step is 3.10e-01 from the XLA step)") in out
    assert ("| 1 | 64 | 4096 | chunked C=1024 | 0.500 | 1.000 | 0.680 | 0.74x | <= 0.5x | "
            "MISSED |") in out
    assert json.loads((run / "report.json").read_text())["missed"] == 2
    # Rows profiled on the device: their heaviest kernels under the row they belong to.
    assert [p["label"] for p in result["profiles"]] == [
        "train step, lasad (pallas), 256 px batch 64: 95.0 ms"]
    section = out.split("## Where the time goes")[1].split("## Defaults")[0]
    assert "profile (/device:GPU:0): kernels busy 80.000 of 95.000 ms wall, 2 launches" in section
    assert "kernels busy 80.000 ms = 84% of the timed 95.000 ms" in section
    assert section.index("custom-call.7") < section.index("fusion.3")


def test_the_calls_folders_are_read_together(run, tmp_path, capsys):
    """Each device call starts with an empty $OUT: the second call's folder alone cannot
    rank the forms for AUTO_TABLE, both calls' folders together give the one-folder
    report, and a stage found in both is the later folder's."""
    first, second = tmp_path / "call1", tmp_path / "call2"
    first.mkdir()
    second.mkdir()
    whole = report.main([str(run)])
    for path in run.glob("*.json"):
        (second if "pallas" in path.name else first).joinpath(path.name).write_text(
            path.read_text())
    alone = report.main([str(second)])
    assert alone["auto_table"] == []
    assert "AUTO_TABLE: not suggested without both the core and the pallas stage" in (
        capsys.readouterr().out)
    together = report.main([str(first), str(second)])
    assert together["auto_table"] == whole["auto_table"] != []
    assert together["operator"] == whole["operator"]
    _write(second, "train_step_gpu.json", [])  # run again in the second call: it counts
    assert report.main([str(first), str(second)])["train_step"] == []


def test_report_names_what_it_cannot_read(tmp_path):
    with pytest.raises(SystemExit, match="no stage JSON"):
        report.main([str(tmp_path)])
    _write(tmp_path, "kernels_core_gpu.json", [])
    _write(tmp_path, "sampling_cpu.json", [])
    with pytest.raises(SystemExit, match=r"backends \['cpu', 'gpu'\]"):
        report.main([str(tmp_path)])
    (tmp_path / "sampling_cpu.json").write_text("{not json")
    with pytest.raises(SystemExit, match="sampling_cpu.json: not a benchmark result JSON"):
        report.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="--aot: no such file"):
        report.main([str(tmp_path), "--aot", str(tmp_path / "missing.json")])


def test_fastest_tiles_needs_every_shape():
    """A setting that failed at one shape cannot be the default, however fast elsewhere."""
    def row(bq, ms, tokens, status="ok"):
        return dict(block_q=bq, block_k=64, num_warps=4, num_stages=2, batch=1, tokens=tokens,
                    ms=ms, status=status)

    rows = [row(64, 1.0, 256), row(64, 2.0, 1024), row(128, 0.5, 256),
            row(128, 0.0, 1024, status="unavailable: shared memory"), row(32, 0.9, 256),
            row(32, 1.8, 1024)]
    best = report.fastest_tiles(rows)
    assert best["tiles"] == (32, 64, 4, 2) and best["total_ms"] == pytest.approx(2.7)
    assert best["default"] == (64, 64, 4, 2) and best["default_ms"] == pytest.approx(3.0)


def test_no_byte_floors_without_the_devices_bandwidth(run):
    """A device kernels.PEAKS does not know gets no floor rather than a guessed one."""
    for name in ("kernels_core_gpu.json", "kernels_pallas_gpu.json", "train_step_gpu.json",
                 "sampling_gpu.json"):
        data = json.loads((run / name).read_text())
        data["info"]["device"] = "NVIDIA B200"
        (run / name).write_text(json.dumps(data))
    result = report.main([str(run), "--aot", _aot(run / "aot.json")])
    assert "floors_from" not in result
    assert all("floor_ms" not in r for part in ("operator", "train_step", "sampling")
               for r in result[part])
