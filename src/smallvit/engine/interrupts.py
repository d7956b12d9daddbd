"""SIGTERM stops a run the way Ctrl-C does.

Python turns SIGINT into :class:`KeyboardInterrupt`, so the run folder's lock is released and a new run stopped
before training began leaves no folder; SIGTERM's default action (what a scheduler, ``kill`` or a container stop
sends) ends the process on the spot, leaving both behind. :func:`sigterm_as_interrupt` gives SIGTERM the same path.
While the trainer trains, its own handlers take over both signals (a checkpoint at the end of the current step).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled wherever Ctrl-C's :class:`KeyboardInterrupt` is; its message names the signal."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"stopped by signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored after it. Outside the
    main thread (where Python cannot set handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
