"""Ranking the selected runs: the objective, the sort key, which way is better, formatting.

Pure functions over MLflow ``Run`` objects, shared by the terminal table, the CSV and the
HTML report (:mod:`runner.compare.report`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = [
    "CompareError",
    "Sort",
    "default_metrics",
    "finite_float",
    "fmt_duration",
    "fmt_param",
    "fmt_value",
    "guess_direction",
    "iso_time",
    "objective_of",
    "order_runs",
    "resolve_sort",
    "varying_params",
]

#: Metric name parts for which smaller is better (when the runs do not say otherwise).
_MINIMIZE = re.compile(r"(loss|rmse|mse|mae|error|err\b|_time_s$|time|duration|latency)")


class CompareError(RunnerError):
    """A bad selection, sort key or output path given to ``runner.compare``."""


@dataclass(frozen=True)
class Sort:
    """How the selection is ranked: ``metrics.<name>`` or ``params.<name>``, and which way."""

    kind: str  # "metrics" | "params"
    key: str
    direction: str  # "maximize" | "minimize"

    @property
    def label(self) -> str:
        """The user-facing ``metrics.x`` spelling."""
        return f"{self.kind}.{self.key}"


def varying_params(runs: Sequence[Run]) -> list[str]:
    """Param keys with at least two different values among the runs that have them.

    A key only some runs have (``model.C`` in an experiment of logreg and xgb runs) is not
    varying by itself: the group choice (``model``) already tells those runs apart.
    """
    values: dict[str, set[str]] = {}
    for r in runs:
        for k, v in r.data.params.items():
            values.setdefault(k, set()).add(v)
    out = [k for k, vs in values.items() if len(vs) > 1]
    # `model._target_` follows the `model` choice: a column that repeats it is noise.
    return sorted(k for k in out if not (k.endswith("._target_") and k[: -len("._target_")] in out))


def objective_of(runs: Sequence[Run]) -> tuple[str | None, str | None]:
    """The most common ``objective`` param of the runs, and its ``direction`` param."""
    objectives = Counter(r.data.params["objective"] for r in runs if "objective" in r.data.params)
    if not objectives:
        return None, None
    objective = objectives.most_common(1)[0][0]
    directions = Counter(
        r.data.params.get("direction")
        for r in runs
        if r.data.params.get("objective") == objective
        and r.data.params.get("direction") in ("maximize", "minimize")
    )
    direction = directions.most_common(1)[0][0] if directions else guess_direction(objective)
    return objective, direction


def guess_direction(metric: str) -> str:
    """``minimize`` for losses, errors and times (``*_time_s``), else ``maximize``."""
    return "minimize" if _MINIMIZE.search(metric.lower()) else "maximize"


def _parse_sort_key(text: str) -> tuple[str, str]:
    for prefix, kind in (("metrics.", "metrics"), ("metric.", "metrics"), ("params.", "params")):
        if text.startswith(prefix):
            return kind, text[len(prefix) :]
    return "metrics", text


def resolve_sort(
    runs: Sequence[Run], sort: str | None, *, ascending: bool | None = None
) -> Sort | None:
    """The ranking: ``sort`` (default: the runs' objective) and its direction.

    The direction is ``--asc``/``--desc`` when given; else the runs' ``direction`` param when
    sorting by their objective; else :func:`guess_direction` (params sort ascending).

    Raises:
        CompareError: No selected run has the sort key (the message lists what they have).
    """
    objective, objective_dir = objective_of(runs)
    if sort is None:
        if objective is None:
            return None
        kind, key = "metrics", objective
    else:
        kind, key = _parse_sort_key(sort.strip())
    if runs and not any(key in getattr(r.data, kind) for r in runs):
        if sort is None:
            return None  # e.g. every run failed before logging its objective
        have = sorted({k for r in runs for k in getattr(r.data, kind)})
        raise CompareError(
            f"no selected run has the {kind[:-1]} {key!r} to sort by; the {kind} they have: "
            f"{', '.join(have) or 'none'}. Pass one of those to --sort (e.g. "
            f"--sort {kind}.{have[0] if have else 'val_accuracy'})."
        )
    if ascending is not None:
        direction = "minimize" if ascending else "maximize"
    elif kind == "params":
        direction = "minimize"
    elif key == objective and objective_dir:
        direction = objective_dir
    else:
        direction = guess_direction(key)
    return Sort(kind, key, direction)


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def order_runs(runs: Sequence[Run], sort: Sort | None) -> list[Run]:
    """The runs best first by ``sort``; runs without the key (or NaN) last, newest first.

    Without a sort, newest first. Ties keep the older run first, so the order is stable.
    """
    by_time = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
    if sort is None:
        return by_time[::-1]
    sign = -1.0 if sort.direction == "maximize" else 1.0
    have: list[tuple[Any, Run]] = []
    missing: list[Run] = []
    for r in by_time:
        raw = getattr(r.data, sort.kind).get(sort.key)
        x = finite_float(raw)
        if x is not None:
            have.append(((0, sign * x, ""), r))
        elif raw is not None and sort.kind == "params":
            text = str(raw)
            have.append(((1, 0.0, text), r))
        else:
            missing.append(r)
    if sort.kind == "params" and sort.direction == "maximize":
        have.sort(key=lambda t: (t[0][0], t[0][1], t[0][2]), reverse=True)
    else:
        have.sort(key=lambda t: t[0])
    return [r for _, r in have] + missing[::-1]


def default_metrics(runs: Sequence[Run], objective: str | None, sort: Sort | None) -> list[str]:
    """The metrics shown by default: the sort metric, the objective, 3 other ``val_*``, fit time."""
    have = {k for r in runs for k in r.data.metrics}
    out: list[str] = []
    for m in (
        sort.key if sort and sort.kind == "metrics" else None,
        objective,
    ):
        if m and m in have and m not in out:
            out.append(m)
    others = sorted(k for k in have if k.startswith("val_") and k not in out)
    out.extend(others[:3])
    if "fit_time_s" in have:
        out.append("fit_time_s")
    if not out:
        out = sorted(have)[:5]
    return out


def fmt_value(x: float | None) -> str:
    """A metric for humans: 4 significant digits, '-' when missing."""
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.4g}"


def fmt_param(text: str | None) -> str:
    """A param for humans: long floats (Optuna's ``0.15119336467641012``) to 4 significant
    digits; anything else (``1.0``, ``-1``, ``lbfgs``, ``1e-05``) exactly as logged, '-' when
    missing. The CSV and the report's hover keep the full text."""
    if text is None:
        return "-"
    x = finite_float(text)
    # Only long numbers are rounded: a grid's "1.0" or "0.01" reads as the user typed it.
    if x is None or len(text) <= 8 or x.is_integer():
        return text
    return f"{x:.4g}"


def fmt_duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def iso_time(ms: int | None) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time ('' when unset)."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
