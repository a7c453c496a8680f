"""The one shell of the runner's commands: ``--tracking-uri``, errors as exit codes, ``__main__``.

Every command exits 0 (ok), 1 (a check failed: ``replay --check``, ``compare --fail-empty``)
or 2 (usage: a bad argument, a store or run that is not there); a :class:`RunnerError` is
printed as one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

from runner.errors import RunnerError

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROGRESS_MIN",
    "CommandProgress",
    "add_tracking_uri",
    "fail",
    "run_main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_TRACKING_URI_HELP = "default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"


def add_tracking_uri(parser: argparse.ArgumentParser, what: str, **kwargs: Any) -> None:
    """The ``--tracking-uri URI`` option, its help saying ``what`` store it is."""
    parser.add_argument(
        "--tracking-uri", metavar="URI", help=f"{what} ({_TRACKING_URI_HELP})", **kwargs
    )


def fail(error: RunnerError) -> int:
    """Print ``error`` as one line and return the usage exit status."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE


def run_main(main: Callable[[], int]) -> NoReturn:
    """``python -m runner.<command>``: run ``main`` and exit with its status, quickly."""
    from runner.shutdown import quick_exit

    quick_exit()
    raise SystemExit(main())


#: Fewer items than this finish in seconds: no progress display.
PROGRESS_MIN = 100
_MODES = ("auto", "rich", "log", "none")


class CommandProgress:
    """The progress of a long command (``sync``, ``lifecycle gc``/``archive``...) on stderr.

    A rich progress bar on a terminal; otherwise one line each time another tenth of the
    items is done (``gc: 120/1200 (10%), 4.1s``), so a CI log shows it moving without
    one line per item. Nothing for fewer than :data:`PROGRESS_MIN` items, or with
    ``RUNNER_PROGRESS=none`` (``rich`` or ``log`` force a display).

    Args:
        what: The command, at the start of each line.
        total: How many items; None until :meth:`update` says.
        stream: Where to write (default stderr).
    """

    #: The progress showing a rich bar now, if any.
    _live: CommandProgress | None = None

    def __init__(self, what: str, total: int | None = None, *, stream: TextIO | None = None):
        from runner.tracking.summary import PROGRESS_ENV

        self.what = what
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
        if mode not in _MODES:
            mode = "auto"  # a typo in an environment variable is no reason to stop a command
        if mode == "auto":
            mode = "rich" if hasattr(self.stream, "isatty") and self.stream.isatty() else "log"
        self.mode = mode
        self._start = time.monotonic()
        self._shown_tenth = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> CommandProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            CommandProgress._live = None

    def _active(self) -> bool:
        return self.mode != "none" and self.total is not None and self.total >= PROGRESS_MIN

    def advance(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` items of ``total`` (or of the total given before) are done."""
        if total is not None:
            self.total = total
        self.done = min(done, self.total) if self.total is not None else done
        if not self._active():
            return
        assert self.total is not None
        if self.mode == "rich":
            self._rich()
            return
        tenth = self.done * 10 // self.total
        if tenth > self._shown_tenth:
            self._shown_tenth = tenth
            elapsed = time.monotonic() - self._start
            self.stream.write(
                f"{self.what}: {self.done}/{self.total} ({self.done * 100 // self.total}%), "
                f"{elapsed:.1f}s\n"
            )
            self.stream.flush()

    def _rich(self) -> None:
        if self._bar is None and CommandProgress._live is not None:
            # rich allows one live display at a time: a step inside another's (gc measuring
            # artifacts while it deletes) prints lines instead.
            self.mode = "log"
            self.update(self.done)
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                f"{self.what}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            CommandProgress._live = self
            self._task = self._bar.add_task(self.what, total=self.total)
        self._bar.update(self._task, completed=self.done, total=self.total)
