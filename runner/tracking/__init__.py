"""The MLflow side of the runner: the callback, params, redaction, provenance, the store.

Nothing here imports MLflow until tracking is actually used.
"""

from __future__ import annotations

from runner.tracking.job import JobRun, NullRun

__all__ = ["JobRun", "NullRun", "current"]


def current() -> JobRun | NullRun:
    """The run of the job in progress (a :class:`NullRun` when tracking is off).

    Raises:
        RunnerError: The callback could not start the job's run (e.g. the store is down).
    """
    from runner.tracking.session import state

    return state.current()
