"""``python -m runner.gate``: a CI/CD gate comparing a candidate run with a baseline.

``checks`` holds the plain functions (the baseline's resolution, the comparison, the
table); ``_command`` is the command line over them.
"""

from __future__ import annotations

from runner.gate._command import main
from runner.gate.checks import (
    Comparison,
    GateError,
    MetricRule,
    compare_runs,
    gate,
    render,
    resolve_baseline,
)

__all__ = [
    "Comparison",
    "GateError",
    "MetricRule",
    "compare_runs",
    "gate",
    "main",
    "render",
    "resolve_baseline",
]
