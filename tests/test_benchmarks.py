"""The benchmark scripts run end to end (tiny sizes) and write what they promise."""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
