"""Settings shared by every test: the markers of the tiers, and a guard on global state.

Tiers (README, "Tests"): `python -m pytest -q` runs everything; `-m "not slow"` is the
inner loop. Both run on every core through pytest-xdist (`-n auto` in pyproject.toml's
addopts; `-n 0` runs in one process). Markers: `slow` (whole jobs, notebooks, subprocess
runs), `multidevice` (8 simulated CPU devices in a subprocess), `notebook`, `gpu` (needs a
CUDA device; skipped elsewhere).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    # Several workers may share one GPU: each takes memory as it needs it instead of JAX's
    # default 75% at start, which would leave the second worker nothing. (Read when the
    # backend starts, which is after this module is imported.)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which the GPU image lacks
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, except on a TPU host, whose chips only one process can
    hold at a time; there the tests run in this process."""
    if importlib.util.find_spec("libtpu") is not None:
        return 0
    return None  # xdist's own count: the CPU cores


def pytest_configure(config):
    for line in (
        "slow: end-to-end jobs and long runs; deselect with -m 'not slow' for the inner loop",
        "multidevice: runs 8 simulated CPU devices in a subprocess",
        "notebook: executes notebooks/ end to end",
        "gpu: needs a CUDA GPU; skipped on other platforms",
    ):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _x64_off():
    # Tests compare float32 forms; make sure nothing enabled x64 globally.
    assert not jax.config.jax_enable_x64
