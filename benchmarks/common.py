"""What the benchmark scripts share: timing, the run's description, writing results."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

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


def run_info(**settings: Any) -> dict:
    """Date, device and software of this run, plus the benchmark's own settings."""
    device = jax.devices()[0]
    return dict(date=datetime.date.today().isoformat(), backend=jax.default_backend(),
                device=getattr(device, "device_kind", str(device)),
                machine=platform.machine(), cores=os.cpu_count(), jax=jax.__version__,
                **settings)


def write_json(path: str, result: dict, quiet: bool = False) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)  # a reader never sees half a file
    if not quiet:
        print(f"wrote {path}")
