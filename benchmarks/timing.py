"""Wall-time measurement shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def median_ms(fn: Callable, *args, repeats: int = 5, min_seconds: float = 1.0) -> float:
    """Median wall time of `fn(*args)` in ms after two warm-ups.

    Runs at least `repeats` times and at least `min_seconds` in all (at most 100 runs),
    because short programs on a shared CPU are noisy. `fn` should be jitted or compiled.
    """
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 100):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)
