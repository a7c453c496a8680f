"""The one shell of the runner's commands: ``--tracking-uri``, errors as exit codes, ``__main__``.

Every command exits 0 (ok), 1 (a check failed: ``replay --check``, ``compare --fail-empty``)
or 2 (usage: a bad argument, a store or run that is not there); a :class:`RunnerError` is
printed as one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from runner.errors import RunnerError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "add_tracking_uri", "fail", "run_main"]

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
