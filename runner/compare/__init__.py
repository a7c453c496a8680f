"""``python -m runner.compare``: compare the runs of an experiment or a sweep.

``_command`` is the command (selection, the terminal table, the CSV, best-run tagging),
``ranking`` the pure functions over runs that it and the HTML ``report`` share.
"""

from __future__ import annotations

from runner.compare._command import CSV_FIXED_COLUMNS, main, select_runs, write_csv
from runner.compare.ranking import CompareError, Sort, order_runs, resolve_sort

__all__ = [
    "CSV_FIXED_COLUMNS",
    "CompareError",
    "Sort",
    "main",
    "order_runs",
    "resolve_sort",
    "select_runs",
    "write_csv",
]
