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

from absl import logging


class PreemptionGuard:
    """Context manager that turns SIGTERM into `guard.requested == True`.

    Signals can only be installed from the main thread; elsewhere (for example a test
    runner's worker thread) the guard does nothing and `requested` stays False.
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

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
