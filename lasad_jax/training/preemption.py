"""Preemption: on SIGTERM, finish the current step, checkpoint it, and exit cleanly.

Cloud TPU maintenance, spot/preemptible VMs and SLURM's `--signal` all announce the end
of a job with SIGTERM and a grace period. The handler only sets a flag; the training
loop checks it after each step, saves that step (forced, outside the save interval) and
returns, so the next launch resumes exactly there. A second SIGTERM while the first is
being handled restores the default action, so an impatient operator can still kill.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionGuard:
    """Context manager that turns SIGTERM into `guard.reached(step) == True`.

    One process: a Python SIGTERM handler sets a flag, read after each step. Signals can
    only be installed from the main thread; elsewhere (for example a test runner's
    worker thread) the guard does nothing. Several processes (`jax.distributed`): all
    hosts must save the same step, or the collective save hangs. JAX's preemption sync
    service (started by `jax.distributed.initialize`, listening for SIGTERM itself)
    picks that step, so the guard installs no handler and asks the service instead.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up the graceful path
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            return
        logging.warning("SIGTERM received: checkpointing after the current step, then exiting")
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; call once after every step."""
        if jax.process_count() > 1:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __enter__(self) -> "PreemptionGuard":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
