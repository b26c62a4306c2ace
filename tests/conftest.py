"""Settings shared by every test: the markers of the tiers, and a guard on global state.

Tiers (README, "Tests"): `python -m pytest -q` runs everything; `-m "not slow"` is the
inner loop. Both run on every core through pytest-xdist (`-n auto` in pyproject.toml's
addopts; `-n 0` runs in one process). Markers: `slow` (whole jobs, notebooks, subprocess
runs), `multidevice` (8 simulated CPU devices in a subprocess), `notebook`, `gpu` (needs a
CUDA device; skipped elsewhere).

On CPU the run shares one JAX compilation cache between its workers and every
subprocess they start, so a program that several tests compile (the demo's training
step, by each job test that runs it) is compiled once; see `_share_compilation_cache`.
It also compiles without LLVM's optimisations and without XLA's CPU fusion emitters,
which the suite's tiny programs do not repay; see `_quick_cpu_codegen`.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile


def _installed(*modules: str) -> bool:
    """Whether any of these modules (an accelerator's JAX plugin) can be imported."""
    return any(importlib.util.find_spec(m) is not None for m in modules)


# Whether JAX may run on a GPU or TPU here: the CPU-only settings below leave such hosts alone.
_ACCELERATOR_HOST = _installed("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin")


def _share_compilation_cache() -> None:
    """Points JAX's persistent compilation cache at a directory made for this run.

    Why: on two CPU cores the suite spends most of its time in XLA's compiler, and many
    tests compile the same programs, most of them in subprocesses (`python -m
    lasad_jax.main` and the benchmark scripts) that cannot share an in-memory cache. The
    variable is set before JAX is imported, in the process that starts the workers, so
    workers and their subprocesses inherit it; that process removes the directory when
    it exits. The cache is keyed by the program, the compile options and XLA's flags, so
    a hit is the executable the test would have compiled. A size limit turns on JAX's file
    lock (the `filelock` package), so a worker never reads an entry another is still
    writing. Left alone: a cache the caller chose (`JAX_COMPILATION_CACHE_DIR` already
    set; set to nothing, no cache), and hosts with a GPU or TPU plugin, where it has not
    been measured.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ or _ACCELERATOR_HOST:
        return
    path = tempfile.mkdtemp(prefix="lasad_jax_compile_cache_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=path,
                      JAX_COMPILATION_CACHE_MAX_SIZE=str(8 << 30),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _quick_cpu_codegen() -> None:
    """Adds `--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false` to
    XLA_FLAGS for this run on a CPU host.

    Why: the suite's programs are tiny and run once or a few times, so most of its time
    is XLA compiling them (about half of the fast tier's CPU time, 2026-12-07). The first
    flag turns LLVM's optimisation of the machine code off and nothing else: the
    optimized HLO is the same text with and without it. Measured on 2 cores, 2026-12-07:
    the demo's `init` compiled in 2.2 s instead of 4.2 s, and the multidevice checks
    (tests/parallel/multidevice) took 160 s instead of 260 s. The second turns XLA's CPU
    fusion emitters off, which halves the compile time again (a small LASADGen's and a
    softmax model's training steps and samplers: 7.0 s -> 3.7 s; the whole suite 25:13
    -> 20:50) but changes the optimized HLO (scatters become loops, a few more copies).
    The tests that read a compiled program's HLO therefore compile it with
    `tests.helpers.DEFAULT_PIPELINE`, which gives back the default pipeline's text
    exactly (tests/repo/test_compilation_cache.py). Values may differ from the default
    pipeline's in rounding; the suite passes with either (2026-12-07). Subprocesses
    inherit both flags. Left alone, as for the cache: flags the caller already set, and
    GPU or TPU hosts.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _ACCELERATOR_HOST:
        return
    for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags


_share_compilation_cache()
_quick_cpu_codegen()

import jax  # noqa: E402  (after the cache's variables, which JAX reads on import)
import pytest  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    # Several workers may share one GPU: each takes memory as it needs it instead of JAX's
    # default 75% at start, which would leave the second worker nothing. (Read when the
    # backend starts, which is after this module is imported.)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which the GPU image lacks
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, except on a TPU host, whose chips only one process can
    hold at a time; there the tests run in this process."""
    if _installed("libtpu"):
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
