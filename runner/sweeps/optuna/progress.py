"""Sweep progress: a live line on a terminal (rich), plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from runner.tracking.redact import redact_text

__all__ = ["Progress"]

log = logging.getLogger("runner.optuna_sweep")


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Counts of the study and the line that shows them.

    Args:
        study_name: Shown at the start of the line.
        n_trials: The total the study runs to.
        mode: ``auto`` (rich on a terminal, log lines otherwise), ``rich``, ``log``, ``none``.
    """

    def __init__(self, study_name: str, n_trials: int, mode: str = "auto") -> None:
        self.study_name = study_name
        self.n_trials = n_trials
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.start = time.monotonic()
        self.done_here = 0
        self._live: Any = None
        self.line = ""

    def __enter__(self) -> Progress:
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                "", console=Console(stderr=True), refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(
        self,
        *,
        done: int,
        running: int,
        failed: int,
        pruned: int,
        best: str,
        event: str | None = None,
    ) -> None:
        """Refresh the line; ``event`` (a finished trial) is also logged in log mode."""
        elapsed = time.monotonic() - self.start
        left = max(self.n_trials - done, 0)
        if self.done_here and left:
            eta = f", ~{_fmt_s(elapsed / self.done_here * left)} left"
        else:
            eta = ""
        self.line = (
            f"{self.study_name}: {done}/{self.n_trials} done, {running} running, "
            f"{failed} failed, {pruned} pruned, best {best}, {_fmt_s(elapsed)} elapsed{eta}"
        )
        if self.mode == "rich" and self._live is not None:
            self._live.update(self.line)
            if event:  # the console, not a log record: redacted here (a swept secret)
                self._live.console.print(redact_text(event))
        elif self.mode == "log" and event:
            log.info("%s | %s", event, self.line)
