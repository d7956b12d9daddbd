"""Stopping a training run cleanly on SIGINT or SIGTERM: the loop finishes its step, writes a checkpoint and stops."""

from __future__ import annotations

import signal
import threading

from smallvit.errors import SmallViTError


class Interrupted(SmallViTError):
    """The run was stopped by a signal after writing a checkpoint it can resume from."""


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step (a second signal stops at once).

    Handlers are installed only in the main thread (Python delivers signals there) and the previous ones restored
    on exit; ``signal`` is the number of the first signal received, else None."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def source(self) -> str:
        """What asked to stop, for messages: ``signal 15``, or another rank's signal (distributed)."""
        return f"signal {self.signal}" if self.signal is not None else "a signal to another rank"
