"""The tree stays lint-clean: ruff's pyflakes (F) and pycodestyle (E, W) rules, 100 columns.

The rules and the width live in pyproject.toml ([tool.ruff]), so `ruff check .` in a clone
gives the same verdict as this test. F catches what a reader cannot see at a glance
(unused imports, undefined names, shadowed loop variables); E and W keep the layout one.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ruff() -> str:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("no ruff on PATH: pip install -r requirements-dev.txt")
    return ruff


def test_the_tree_passes_ruff():
    proc = subprocess.run([_ruff(), "check", "--no-cache", "--output-format=concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_lint_check_can_fail(tmp_path):
    # The project's settings applied to a file with one finding of each family.
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\nx = 1 \n" + "y = '" + "a" * 100 + "'\n")
    proc = subprocess.run([_ruff(), "check", "--no-cache", "--output-format=concise", "."],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert {"F401", "W291", "E501"} <= {line.split()[1] for line in proc.stdout.splitlines()
                                        if line.startswith("bad.py:")}
