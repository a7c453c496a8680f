"""Signals as interrupts: SIGTERM takes Ctrl-C's way out, and short critical steps hold both.

Runs end KILLED on ``KeyboardInterrupt`` (see :func:`runner.tracking.callback.close_open_runs`),
so SIGTERM raises it too. A few steps must not be cut in half by either: creating a run and
recording its id (a kill in between leaves a RUNNING run that nobody ends), and a store's
schema migration (a kill in the middle leaves a store no client can open).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

__all__ = ["deferred", "handled", "terminate"]

_HELD = (signal.SIGTERM, signal.SIGINT)


def terminate(signum: int, frame: FrameType | None) -> NoReturn:
    """A SIGTERM handler that raises ``KeyboardInterrupt``, as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def handled() -> None:
    """Say that a caught ``KeyboardInterrupt`` was handled, so the exit status chosen stands.

    CPython remembers a ``KeyboardInterrupt`` that propagated out of an ``exec`` or ``eval``
    of a string (the frames that ``dataclasses`` and ``namedtuple`` run while a module is
    imported, so a lazy import is enough) and, at exit, kills the process with SIGINT
    instead of returning the status the program chose. Each such ``exec`` starts by
    clearing that memory, so an empty one does it. Call it where the interrupt is caught.
    """
    exec("")


@contextlib.contextmanager
def deferred(*, drop: bool = False) -> Iterator[None]:
    """Hold SIGTERM and SIGINT back until the block ends, then deliver the first one received.

    Python runs signal handlers in the main thread only, so the handlers are swapped rather
    than the thread's signal mask: a signal that another thread (MLflow's, SQLAlchemy's)
    receives is held as well. Outside the main thread this does nothing (no handler runs
    there anyway).

    Args:
        drop: Forget held signals instead (the clean-up on the way out of a process: a
            second Ctrl-C must not cut it short, and the process ends anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    # A handler not set from Python (None) cannot be restored, so that signal is left alone.
    previous = {s: h for s in _HELD if (h := signal.getsignal(s)) is not None}
    for s in previous:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if received and not drop:
            # The restored handler runs now: KeyboardInterrupt leaves the `with` here.
            signal.raise_signal(received[0])
