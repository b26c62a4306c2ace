"""Settings shared by every test: the markers of the tiers, and a guard on global state.

Tiers (README, "Tests"): `python -m pytest -q` runs everything; `-m "not slow"` is the
inner loop. Markers: `slow` (whole jobs, notebooks, subprocess runs), `multidevice`
(8 simulated CPU devices in a subprocess), `notebook`, `gpu` (needs a CUDA device; skipped
elsewhere).
"""

from __future__ import annotations

import jax
import pytest


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
