"""pyproject.toml and the requirements files ask for the same packages at the same versions.

A fresh clone installs from the requirements files (the README and CI), a user of the
package from pyproject.toml: a bound kept in one and not the other (pytest < 9.2, which
keeps pytest-xdist's groups whole) would silently differ between the two installs.
"""

from __future__ import annotations

import pathlib
import tomllib

from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _requirements(specs) -> dict[str, str]:
    """Package name -> its version specifier, normalised (`>=8.0,<9.2` in either order)."""
    reqs = (Requirement(s) for s in specs if s.strip())
    return {r.name.lower(): ",".join(sorted(str(spec) for spec in r.specifier)) for r in reqs}


def _file(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    return _requirements(line.split("#")[0] for line in lines if not line.startswith("-r"))


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_runtime_dependencies_agree():
    assert _requirements(_project()["dependencies"]) == _file("requirements.txt")


def test_dev_extra_matches_requirements_dev():
    dev = _requirements(_project()["optional-dependencies"]["dev"])
    assert dev == _file("requirements-dev.txt")
    assert dev["pytest"] == "<9.2,>=8.0"  # the bound's reason: tests/repo/test_xdist_groups.py
