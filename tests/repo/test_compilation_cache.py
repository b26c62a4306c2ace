"""What tests/conftest.py sets for the suite's compiles: the compilation cache its processes
share, and XLA's CPU code generation without LLVM's optimisations."""

from __future__ import annotations

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
import re, jax, jax.numpy as jnp
f = lambda x, w: jnp.tanh(x @ w).sum(0) + jnp.cumsum(x, 1)[-1]
x = jnp.ones((16, 8))
text = jax.jit(f).lower(x, jnp.ones((8, 8))).compile().as_text()
print(re.sub(r", metadata=\\{[^}]*\\}", "", text))
"""


def test_quick_codegen_changes_the_machine_code_not_the_program():
    flags = os.environ.get("XLA_FLAGS", "")
    if jax.default_backend() != "cpu" or "xla_backend_optimization_level=0" not in flags:
        pytest.skip("no code generation flag on this host (tests/conftest.py)")

    def optimized_hlo(xla_flags: str) -> str:
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_COMPILATION_CACHE_DIR="")
        return subprocess.run([sys.executable, "-c", _HLO], env=env, capture_output=True,
                              text=True, check=True).stdout

    quick = optimized_hlo(flags)
    assert "fusion" in quick  # XLA's HLO passes ran
    assert quick == optimized_hlo(flags.replace("--xla_backend_optimization_level=0", ""))
