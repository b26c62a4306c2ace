"""The suite's parallel runner keeps an `xdist_group` on one worker.

Why: tests/parallel/test_sharding.py's multidevice tests share one 4-minute subprocess
through a module fixture, which runs once per worker that needs it. pyproject.toml's
`--dist loadgroup` sends a group to one worker; pytest 9.2 broke that silently (its
structured node IDs drop the group suffix pytest-xdist writes: pytest-xdist issue 1386),
and each of the two CI workers ran the subprocess, about four minutes more per run.
requirements-dev.txt keeps pytest below 9.2 until a release fixes it; this test fails
if the grouping stops working again.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_MODULE = """
import os, pathlib, pytest

def _record(name):
    out = pathlib.Path(os.environ["GROUP_OUT"]) / name
    out.write_text(os.environ.get("PYTEST_XDIST_WORKER", "none"))

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    _record(f"free{i}")

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    _record(f"grouped{i}")
"""


def test_loadgroup_runs_a_group_on_one_worker(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "test_toy.py").write_text(_MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(tmp_path / "test_toy.py")],
        cwd=tmp_path, env={**os.environ, "GROUP_OUT": str(out)},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    workers = {p.name: p.read_text() for p in out.iterdir()}
    assert len(workers) == 10
    grouped = {w for name, w in workers.items() if name.startswith("grouped")}
    assert len(grouped) == 1 and grouped != {"none"}, workers
