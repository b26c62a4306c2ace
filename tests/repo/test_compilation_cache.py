"""The compilation cache that tests/conftest.py shares between the suite's processes."""

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
