"""Per-process tracking state: the job's run and the sweep this process started.

Hydra turns exceptions raised inside callbacks into warnings, so a callback that cannot start
a run records the error here and :func:`current` re-raises it inside the job, where it fails
the job as it should. Under process launchers every process has its own state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.tracking.job import JobRun, NullRun

__all__ = ["State", "Sweep", "state"]


@dataclass
class Sweep:
    """A sweep this process launched (its parents are ended here)."""

    uri: str
    dir: Path


class State:
    """The tracking state of this process."""

    def __init__(self) -> None:
        self.job: JobRun | NullRun | None = None
        self.job_error: BaseException | None = None
        self.sweep: Sweep | None = None

    def current(self) -> JobRun | NullRun:
        """The job's run; raises the error that kept the callback from starting it."""
        if self.job_error is not None:
            raise self.job_error
        return self.job if self.job is not None else NullRun()


state = State()
