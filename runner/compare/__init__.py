"""``python -m runner.compare``: compare the runs of an experiment, a sweep, or sweeps.

``_command`` is the command (selection, the terminal table, the CSV, best-run tagging),
``sweeps`` finds sweeps by id or name and summarises each, ``ranking`` the pure functions
over runs that they and the HTML ``report`` share.
"""

from __future__ import annotations

from runner.compare._command import CSV_FIXED_COLUMNS, main, select_runs, write_csv
from runner.compare.ranking import CompareError, Sort, order_runs, resolve_sort
from runner.compare.sweeps import SweepSummary, resolve_sweeps, summarise

__all__ = [
    "CSV_FIXED_COLUMNS",
    "CompareError",
    "Sort",
    "SweepSummary",
    "main",
    "order_runs",
    "resolve_sort",
    "resolve_sweeps",
    "select_runs",
    "summarise",
    "write_csv",
]
