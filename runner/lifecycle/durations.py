"""Durations on the command line: ``30m``, ``2h``, ``7d``, ``1w``, ``1d12h``."""

from __future__ import annotations

import re
from datetime import timedelta

from runner.errors import RunnerError

__all__ = ["DurationError", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


class DurationError(RunnerError):
    """A duration string cannot be parsed."""


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Parse ``90d``, ``2h``, ``30m``, ``45s``, ``1w`` or a sum such as ``1d12h``.

    Args:
        text: The string as the user wrote it.
        what: What the duration is for (the flag), named in the error.

    Raises:
        DurationError: The string is not a number followed by a unit, repeated.
    """
    s = str(text).strip().lower()
    if not _WHOLE.fullmatch(s):
        raise DurationError(
            f"{what} {text!r} is not a duration. Write a number and a unit: s (seconds), "
            "m (minutes), h (hours), d (days) or w (weeks), e.g. 30m, 2h, 7d, 1w or 1d12h."
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(s))
    return timedelta(seconds=seconds)
