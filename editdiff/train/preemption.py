"""SIGTERM as a request to stop after the current step (save, then exit cleanly) rather than a kill."""
from __future__ import annotations

import logging
import signal
import threading


class StopRequest:
    """Context manager: while active, SIGTERM sets `requested` instead of terminating the process.

    Installed only in the main thread of a single-process run; on multi-host jobs jax.distributed's
    preemption service catches the signal and every process learns of it through
    `Checkpointer.reached_preemption`, so all stop at the same step.
    """

    def __init__(self, enabled: bool = True):
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous_handler = None
        self.requested = False

    def _handle(self, signum, frame):
        logging.warning("Received signal %d: will save a checkpoint and stop after the current step.", signum)
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if self._enabled:
            self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._enabled:
            signal.signal(signal.SIGTERM, self._previous_handler)
