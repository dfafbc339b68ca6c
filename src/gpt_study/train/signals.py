"""Stopping on a signal: SIGINT / SIGTERM ask the loop to stop after the current step and save.

A second signal interrupts at once. Handlers are installed only in the main thread and restored
on exit, so a library caller's own handlers come back.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """Context manager that records the first SIGINT / SIGTERM in ``received``."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name  # the loop notices it after this step

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def exit_code(stopped: str) -> int:
    """A run stopped by a signal exits as the shell expects (128 + the signal's number)."""
    sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}.get(stopped)
    return 128 + int(sig) if sig is not None else 0
