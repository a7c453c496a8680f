"""The gate's plain functions: find the baseline, compare the metrics, draw the table.

A rule allows a metric to get worse by at most ``max_drop`` (absolute, or a fraction of the
baseline's value); which way is worse comes from the metric's name, as in
``runner.compare`` (:func:`runner.compare.ranking.guess_direction`: losses, errors and times
are better smaller), unless the rule says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner import contract
from runner.compare.ranking import fmt_value, guess_direction
from runner.errors import RunnerError

__all__ = [
    "Comparison",
    "GateError",
    "MetricRule",
    "Row",
    "compare_runs",
    "gate",
    "render",
    "resolve_baseline",
]

#: Float noise below which a change is no change (metrics are stored as doubles).
_EPS = 1e-12


class GateError(RunnerError):
    """The gate cannot compare as asked (unknown run or model, a missing metric...)."""


@dataclass(frozen=True)
class MetricRule:
    """One metric the candidate must hold.

    Attributes:
        name: The metric (``val_accuracy``).
        max_drop: How much worse the candidate may be than the baseline.
        relative: ``max_drop`` is a fraction of the baseline's value (``--max-drop 1%``).
        direction: ``maximize`` or ``minimize``; None: from the name.
    """

    name: str
    max_drop: float = 0.0
    relative: bool = False
    direction: str | None = None

    @property
    def better(self) -> str:
        """``maximize`` or ``minimize``."""
        return self.direction or guess_direction(self.name)

    def allowed(self, baseline: float) -> float:
        """The drop allowed against a baseline value."""
        return abs(baseline) * self.max_drop if self.relative else self.max_drop

    def shown(self) -> str:
        """The allowed drop as the user wrote it."""
        return f"{self.max_drop * 100:g}%" if self.relative else f"{self.max_drop:g}"


@dataclass(frozen=True)
class Row:
    """One metric compared: ``drop`` > 0 means the candidate is worse."""

    rule: MetricRule
    baseline: float
    candidate: float
    drop: float
    allowed: float

    @property
    def ok(self) -> bool:
        """Within the allowed drop (a non-finite value never is)."""
        finite = math.isfinite(self.baseline) and math.isfinite(self.candidate)
        return finite and self.drop <= self.allowed + _EPS


@dataclass
class Comparison:
    """The candidate against the baseline, metric by metric."""

    candidate: Any  # mlflow.entities.Run
    baseline: Any
    baseline_label: str
    rows: list[Row] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        """The rows outside their allowed drop."""
        return [r for r in self.rows if not r.ok]

    @property
    def candidate_finished(self) -> bool:
        """Whether the candidate run ended FINISHED (a failed run never passes)."""
        return str(self.candidate.info.status) == "FINISHED"

    @property
    def passed(self) -> bool:
        """No regression, and the candidate finished."""
        return self.candidate_finished and not self.regressions


def _run(client: Any, run_id: str, what: str) -> Any:
    from runner.tracking.reader import is_run_id, require_run

    if not is_run_id(run_id):
        raise GateError(
            f"{what} {run_id!r} is not a run id (32 hex digits); pass a run id, `best`, or "
            "ALIAS:MODEL_NAME (e.g. champion:iris-clf)."
        )
    return require_run(
        client,
        run_id,
        error=GateError,
        message=(
            f"{what} {run_id} is not a run in this tracking store; check the id and --tracking-uri."
        ),
    )


def _best_tagged(client: Any, candidate: Any, rules: Sequence[MetricRule]) -> tuple[Any, str]:
    from runner.tracking.best import rank
    from runner.tracking.reader import search_runs

    exp = candidate.info.experiment_id
    tagged = search_runs(client, [exp], f"tags.`{contract.BEST}` = 'true'")
    parent = candidate.data.tags.get(contract.PARENT_RUN_ID)
    same_sweep = [r for r in tagged if parent and r.data.tags.get(contract.PARENT_RUN_ID) == parent]
    pool = same_sweep or tagged
    if not pool:
        raise GateError(
            f"--baseline best: no run of the candidate's experiment (id {exp}) is tagged "
            f"{contract.BEST}=true. Tag one first: python -m runner.compare --experiment "
            "<name> --tag-best (or python -m runner.lifecycle tag-best), or pass a run id."
        )
    others = [r for r in pool if r.info.run_id != candidate.info.run_id] or pool
    if len(others) > 1:  # --top K tagged several: the best of them by the first metric
        rule = rules[0]
        ranked = [r for r in others if rule.name in r.data.metrics]
        if ranked:
            others = rank(ranked, metric=rule.name, direction=rule.better)
    scope = "sweep" if same_sweep else "experiment"
    return others[0], f"best ({contract.BEST}=true in the candidate's {scope})"


def _registered(client: Any, name: str, alias: str) -> tuple[Any, str]:
    from runner.tracking.registry import current_version

    version = current_version(client, name, alias)
    if version is None:
        raise GateError(
            f"registered model {name!r} has no alias {alias!r} (or there is no such model). "
            f"Register a baseline first: python -m runner.compare --experiment <name> "
            f"--register-best {name} --alias {alias}."
        )
    if not version.run_id:
        raise GateError(
            f"{name}@{alias} (version {version.version}) was not registered from a run, so "
            "it has no metrics to compare; pass --baseline RUN_ID instead."
        )
    run = _run(client, version.run_id, f"the run of {name}@{alias}")
    return run, f"{alias}:{name} (version {version.version})"


def resolve_baseline(
    client: Any, spec: str, candidate: Any, rules: Sequence[MetricRule]
) -> tuple[Any, str]:
    """The baseline run that ``spec`` names, and how to describe it.

    Args:
        client: An ``MlflowClient``.
        spec: ``best`` (the run tagged ``runner.best=true`` in the candidate's sweep, else
            its experiment), ``ALIAS:MODEL_NAME`` or ``models:/MODEL_NAME@ALIAS`` (the run
            a registered model's alias points at, e.g. ``champion:iris-clf``), or a run id.
        candidate: The candidate run.
        rules: The metric rules (the first breaks ties among several best-tagged runs).

    Raises:
        GateError: No such run, model, alias or best-tagged run.
    """
    if spec == "best":
        return _best_tagged(client, candidate, rules)
    if spec.startswith("models:/") and "@" in spec:
        name, _, alias = spec.removeprefix("models:/").rpartition("@")
        return _registered(client, name, alias)
    if ":" in spec:
        alias, _, name = spec.partition(":")
        if not alias or not name:
            raise GateError(f"--baseline {spec!r}: write ALIAS:MODEL_NAME, e.g. champion:iris-clf.")
        return _registered(client, name, alias)
    run = _run(client, spec, "--baseline")
    return run, f"run {spec}"


def _value(run: Any, metric: str, side: str) -> float:
    if metric not in run.data.metrics:
        have = ", ".join(sorted(run.data.metrics)) or "no metrics at all"
        raise GateError(
            f"the {side} run {run.info.run_id} has no metric {metric!r}; it has: {have}. "
            "Pass --metric <one of those>."
        )
    return float(run.data.metrics[metric])


def compare_runs(candidate: Any, baseline: Any, rules: Sequence[MetricRule]) -> list[Row]:
    """One :class:`Row` per rule.

    Raises:
        GateError: A metric is missing on either side (the message lists what it has).
    """
    rows = []
    for rule in rules:
        base = _value(baseline, rule.name, "baseline")
        cand = _value(candidate, rule.name, "candidate")
        drop = base - cand if rule.better == "maximize" else cand - base
        rows.append(Row(rule, base, cand, drop, rule.allowed(base)))
    return rows


def _name(run: Any) -> str:
    return f"{run.info.run_id} ({run.info.run_name}, {run.info.status})"


def render(comparison: Comparison) -> str:
    """The comparison as a plain-text table, with a verdict line (for a CI log)."""
    c = comparison
    lines = [
        f"candidate: {_name(c.candidate)}",
        f"baseline:  {c.baseline_label}: {_name(c.baseline)}",
    ]
    if c.baseline.info.run_id == c.candidate.info.run_id:
        lines.append("note: the candidate is the baseline itself.")
    header = ("metric", "better", "baseline", "candidate", "change", "allowed drop", "result")
    table = [header]
    for r in c.rows:
        change = r.candidate - r.baseline
        table.append(
            (
                r.rule.name,
                "higher" if r.rule.better == "maximize" else "lower",
                fmt_value(r.baseline),
                fmt_value(r.candidate),
                f"{change:+.4g}" if math.isfinite(change) else str(change),
                r.rule.shown(),
                "ok" if r.ok else "REGRESSION",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    bad = c.regressions
    if not c.candidate_finished:
        lines.append(f"gate: FAILED: the candidate run is {c.candidate.info.status}, not FINISHED.")
    if bad:
        worst = ", ".join(
            f"{r.rule.name} got worse by {fmt_value(r.drop)} (allowed {fmt_value(r.allowed)})"
            for r in bad
        )
        lines.append(f"gate: FAILED: {len(bad)} of {len(c.rows)} metrics regressed: {worst}.")
    if c.passed:
        lines.append(f"gate: passed: {len(c.rows)} metrics within their allowed drop.")
    return "\n".join(lines)


def gate(client: Any, run_id: str, baseline: str, rules: Sequence[MetricRule]) -> Comparison:
    """Compare run ``run_id`` with the baseline ``baseline`` names, on ``rules``.

    Raises:
        GateError: An unknown run, model or alias, or a metric missing on either side.
    """
    candidate = _run(client, run_id, "--run")
    base, label = resolve_baseline(client, baseline, candidate, rules)
    return Comparison(candidate, base, label, compare_runs(candidate, base, rules))
