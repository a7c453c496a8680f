"""The one error base class of the runner.

Every error a user can cause (a bad override, a missing file, an unreachable store) is a
:class:`RunnerError` whose message says what was wrong, the value, and the fix. It derives from
Hydra's ``CompactHydraException`` so that ``python -m runner`` prints the message alone, not a
traceback wall.
"""

from __future__ import annotations

from hydra.errors import CompactHydraException

__all__ = ["ConfigError", "DataError", "RunnerError", "TrackingError"]


class RunnerError(CompactHydraException):
    """Base class of every user-facing runner error."""


class ConfigError(RunnerError):
    """The composed configuration cannot be used as it is."""


class DataError(RunnerError):
    """A dataset cannot be loaded or does not fit the task."""


class TrackingError(RunnerError):
    """The tracking store cannot be reached or refused a write."""
