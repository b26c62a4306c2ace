"""What tests/conftest.py sets for the suite's compiles: the compilation cache its processes
share, and XLA's CPU code generation without LLVM's optimisations."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import jax
import pytest

# Compiles one program, which no other test compiles (a constant drawn per test), and
# prints how many persistent-cache hits the process had.
_PROGRAM = """
import jax, jax.numpy as jnp, numpy as np
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
jax.jit(lambda x: jnp.sin(x) * {c!r} + jnp.cos(x) ** 2)(np.arange(7.0)).block_until_ready()
print(hits.count("/jax/compilation_cache/cache_hits"))
"""


def test_a_program_one_process_compiled_is_a_hit_in_the_next():
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not path:
        pytest.skip("no shared compilation cache on this host (tests/conftest.py)")
    # Set before this process imported JAX, or JAX would not have read it.
    assert jax.config.jax_compilation_cache_dir == path
    if os.path.basename(path).startswith("lasad_jax_compile_cache_"):  # conftest's own
        assert jax.config.jax_compilation_cache_max_size > 0  # which turns the lock on
    code = _PROGRAM.format(c=random.uniform(2.0, 3.0))
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    hits = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split()[-1] for _ in range(2)]
    assert hits == ["0", "1"]


_HLO = """
import json, re, sys, jax, jax.numpy as jnp
def f(x, w):  # a matmul, a reduction, a scan and a scatter
    out = jnp.tanh(x @ w).sum(0) + jnp.cumsum(x, 1)[-1]
    return out.at[x[0, :3].astype(jnp.int32)].add(x[1, :3])
x = jnp.ones((16, 8))
text = jax.jit(f).lower(x, jnp.ones((8, 8))).compile(json.loads(sys.argv[1])).as_text()
print(re.sub(r", metadata=\\{[^}]*\\}", "", text))
"""


def test_quick_codegen_changes_the_machine_code_not_what_hlo_tests_read():
    """Without LLVM's optimisations the optimized HLO is the same text; without XLA's
    fusion emitters it is not, but `DEFAULT_PIPELINE` (what the tests that read HLO
    compile with) gives the default pipeline's text back."""
    from tests.helpers import DEFAULT_PIPELINE

    flags = os.environ.get("XLA_FLAGS", "")
    quick = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
    if jax.default_backend() != "cpu" or not all(f in flags for f in quick):
        pytest.skip("no code generation flags on this host (tests/conftest.py)")

    def optimized_hlo(xla_flags: str, options: dict) -> str:
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_COMPILATION_CACHE_DIR="")
        return subprocess.run([sys.executable, "-c", _HLO, json.dumps(options)], env=env,
                              capture_output=True, text=True, check=True).stdout

    default = optimized_hlo(" ".join(f for f in flags.split() if f not in quick), {})
    assert "fusion" in default  # XLA's HLO passes ran
    assert optimized_hlo(flags, {}) != default  # the emitters' flag changes the program
    assert optimized_hlo(flags, DEFAULT_PIPELINE) == default
    no_llvm_opt = flags.replace("--xla_cpu_use_fusion_emitters=false", "")
    assert optimized_hlo(no_llvm_opt, {}) == default
