"""Signals as cooperative interrupts: SIGTERM and Ctrl-C never land inside the runner's I/O.

A ``KeyboardInterrupt`` raised at an arbitrary bytecode can cut a store call in half: inside
SQLAlchemy's read of ``mlflow.start_run`` it left the SQLite connection holding its lock,
and the clean-up then failed on ``database is locked``; inside MLflow's schema creation it
left a store no client can open. So the runner's processes run *held* by default:

- :func:`install` (the entry points: ``python -m runner``, sweep workers, the Optuna sweeper
  in any app) makes SIGTERM and SIGINT record the signal instead of raising.
- The recorded signal is acted on at safe points: :func:`checkpoint` (between trials,
  between grid jobs, before a job's task starts, at the end of ``main``) raises
  ``KeyboardInterrupt`` there, and the usual way out ends the runs KILLED and voids the
  trials.
- The user's code runs :func:`interruptible`: the task function (a long ``fit``), where a
  signal raises at once, as Ctrl-C always did. The runner's calls made from inside it
  (step metrics, pruning reports) are :func:`held` again for their duration.
- A second signal while the first is still held means "now": it raises wherever it lands.
  The final clean-up (:func:`held` with ``drop=True``) never raises instead, so that ending
  the open runs is never cut short; the signal is still remembered (``main`` exits 130).

Outside a process that called :func:`install` (an app of the user's that only adds the
callback) :func:`held` swaps the handlers for its block, so the runner's own writes are
still never cut, and the signal then takes its normal course.

Python runs signal handlers in the main thread only; every function here is a no-op in
other threads (MLflow's upload pool, the Optuna heartbeat), which no signal interrupts.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn, ParamSpec, TypeVar

__all__ = [
    "checkpoint",
    "fenced",
    "handled",
    "held",
    "install",
    "installed",
    "interruptible",
    "pending",
    "terminate",
]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

P = ParamSpec("P")
R = TypeVar("R")


class _State:
    """The main thread's interrupt state (signal handlers run in the main thread only)."""

    def __init__(self) -> None:
        #: The first signal received and not acted on yet.
        self.pending: int | None = None
        #: Whether a signal raises where it lands (the user's code) or waits (the runner's).
        self.preemptive = True
        #: The final clean-up: signals never raise (they are still remembered).
        self.dropping = False
        #: Whether :func:`install` made our handler the process's.
        self.installed = False


_state = _State()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.dropping:
        # The final clean-up: never cut short, but the exit status still says "stopped".
        _state.pending = _state.pending or signum
        return
    if _state.preemptive or _state.pending is not None:
        # In the user's code, or a second signal while the first is held: now.
        _state.pending = None
        raise KeyboardInterrupt(f"signal {signum}")
    _state.pending = signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def terminate(signum: int, frame: FrameType | None) -> NoReturn:
    """A plain SIGTERM handler that raises ``KeyboardInterrupt``, as Ctrl-C does.

    For processes with no I/O of their own to protect (``python -m runner.server``, which
    only waits for its child).
    """
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """Make SIGTERM and SIGINT cooperative in this process (see the module docstring).

    SIGINT is left alone where it is ignored (a worker process, a background job of a
    non-interactive shell): only a handler that Python set up is replaced.
    """
    if not _main_thread():
        return
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    _state.installed = True
    _state.preemptive = False
    _state.pending = None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """:func:`install` for the block, unless SIGTERM already has a handler of someone else's.

    For the Optuna sweeper in an app without the runner's entry point: SIGTERM would
    otherwise kill the process with its runs RUNNING and its trials never voided.
    """
    if not _main_thread() or _state.installed:
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # the app handles SIGTERM itself
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    install()
    try:
        yield
    finally:
        _state.installed, _state.preemptive = False, True
        for s, h in previous.items():
            if h is not None:
                signal.signal(s, h)


def pending() -> int | None:
    """The signal received and not yet acted on, if any."""
    return _state.pending


def checkpoint() -> None:
    """A safe point: raise ``KeyboardInterrupt`` if a signal is waiting.

    Call it only where nothing of the runner's is half done (between trials, before a
    job's task starts).
    """
    if _state.pending is not None and _main_thread():
        signum, _state.pending = _state.pending, None
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Run the user's code (the task function): a signal raises at once inside the block.

    A signal already waiting raises on entry.
    """
    if not _main_thread() or not _state.installed:
        yield
        return
    checkpoint()
    previous, _state.preemptive = _state.preemptive, True
    try:
        yield
    finally:
        _state.preemptive = previous


@contextlib.contextmanager
def held(*, drop: bool = False) -> Iterator[None]:
    """Hold SIGTERM and SIGINT back for the block (a store call, a storage call, a write).

    A signal received meanwhile is delivered when the block ends, if the code around it is
    the user's (interruptible); otherwise it waits for the next :func:`checkpoint`.

    Args:
        drop: Never raise for the block, not even on a second signal (the clean-up on the
            way out of a process: a second Ctrl-C must not cut it short); a signal is
            still remembered for the next :func:`checkpoint`. Where the handlers are not
            ours, signals received in the block are dropped (the process ends anyway).
    """
    if not _main_thread():
        yield
        return
    if not _state.installed:
        with _swapped(drop=drop):
            yield
        return
    previous = (_state.preemptive, _state.dropping)
    _state.preemptive = False
    _state.dropping = previous[1] or drop
    try:
        yield
    finally:
        _state.preemptive, _state.dropping = previous
        if _state.preemptive:
            checkpoint()


@contextlib.contextmanager
def _swapped(*, drop: bool) -> Iterator[None]:
    """:func:`held` in a process whose handlers are not ours: swap them for the block."""
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    # A handler not set from Python (None) cannot be restored, so that signal is left alone.
    previous = {s: h for s in _SIGNALS if (h := signal.getsignal(s)) is not None}
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


def fenced(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function that does I/O: it runs :func:`held`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with held():
            return func(*args, **kwargs)

    return wrapper


def handled() -> None:
    """Say that a caught ``KeyboardInterrupt`` was handled, so the exit status chosen stands.

    CPython remembers a ``KeyboardInterrupt`` that propagated out of an ``exec`` or ``eval``
    of a string (the frames that ``dataclasses`` and ``namedtuple`` run while a module is
    imported, so a lazy import is enough) and, at exit, kills the process with SIGINT
    instead of returning the status the program chose. Each such ``exec`` starts by
    clearing that memory, so an empty one does it. Call it where the interrupt is caught.
    """
    exec("")
