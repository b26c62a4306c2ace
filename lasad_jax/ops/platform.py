"""Which platform the operator compiles for, where it chooses kernels and defaults."""

from __future__ import annotations

import jax


def target_platform() -> str:
    """The platform of the configured default device (`jax.config.jax_default_device`)
    when one is set, else JAX's default backend: "cpu", "gpu" or "tpu".

    Why not `jax.default_backend()` alone: a program compiled ahead of time for a device
    that is not attached (benchmarks/gpu_aot.py compiles for an H200 on a CPU machine)
    sets that device as the default; choosing kernels by the local backend would compile
    Pallas' CPU interpreter into the GPU program."""
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    platform = device if isinstance(device, str) else device.platform
    return "gpu" if platform in ("cuda", "rocm") else platform
