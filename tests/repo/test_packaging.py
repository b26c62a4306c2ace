"""pyproject.toml and requirements.txt name the same runtime packages."""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _names(specs):
    return {re.split(r"[<>=!~ ;\[]", s.strip(), maxsplit=1)[0].lower() for s in specs if s}


def test_runtime_dependencies_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.split("#")[0] for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert _names(project["dependencies"]) == _names(lines)


def test_dev_extra_matches_requirements_dev():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [line.split("#")[0] for line in (ROOT / "requirements-dev.txt").read_text()
             .splitlines() if not line.startswith("-r")]
    assert _names(project["optional-dependencies"]["dev"]) == _names(lines)
