"""Plans of the lifecycle commands that work through ``MlflowClient`` alone.

Every command first builds a :class:`Plan` (reads only: which experiments or runs, and why),
which the CLI prints, confirms and then executes. Planning does every check a command needs,
so an error stops it before anything changed. Requests are few: one paged search per question
("which runs are RUNNING", "which runs have a parent"), never one per run; ``search_runs``
already returns each run's latest metrics with their timestamps.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.errors import RunnerError
from runner.tracking.best import tag_best
from runner.tracking.reader import Lineage, search_experiments, search_runs

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "LifecycleError",
    "Plan",
    "experiment_by_name",
    "plan_archive",
    "plan_close_stale",
    "plan_prune_failed",
    "plan_tag_best",
]

_PARENT_FILTER = f"tags.`{contract.PARENT_RUN_ID}` LIKE '%'"
_BEST_FILTER = f"tags.`{contract.BEST}` = 'true'"
# MLflow refuses to delete its Default experiment on some stores and recreates it on others;
# archive never touches it.
_DEFAULT_EXPERIMENT = "0"


class LifecycleError(RunnerError):
    """A lifecycle command cannot run as asked (unknown experiment, bad argument...)."""


@dataclass
class Plan:
    """What a command will do: a title, one line per target, notes on what it spares."""

    command: str
    title: str
    targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    destructive: bool = True
    #: Runs the plan; called with a function that reports one action per call.
    execute: Callable[[Callable[[str], None]], None] = lambda report: None
    #: Printed after the actions (how to undo, what is left).
    epilogue: list[str] = field(default_factory=list)
    #: What was left alone, and why (printed to stderr as ``warning:`` lines).
    warnings: list[str] = field(default_factory=list)


# -- small helpers ----------------------------------------------------------------------------
def now_ms() -> int:
    """The current time in epoch milliseconds, MLflow's unit."""
    return int(time.time() * 1000)


def fmt_ms(ms: int | None) -> str:
    """An epoch-millisecond time as ``2026-01-31 12:00 UTC``."""
    if not ms:
        return "never"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_activity(run: Run) -> int:
    """A run's last activity: the latest of its start, end and metric timestamps (ms).

    MLflow keeps no "last updated" time for runs; the latest metrics that ``search_runs``
    returns carry their timestamps (``RunData._metric_objs``, the only place the client
    exposes them without one ``get_metric_history`` request per metric).
    """
    stamps = [run.info.start_time or 0, run.info.end_time or 0]
    stamps += [m.timestamp or 0 for m in getattr(run.data, "_metric_objs", [])]
    return max(stamps)


def search_all(
    client: MlflowClient,
    experiment_ids: Iterable[str],
    filter_string: str = "",
    *,
    deleted_too: bool = False,
) -> list[Run]:
    """Every run of ``experiment_ids`` matching ``filter_string`` (paged, 1000 a request)."""

    ids = sorted(set(experiment_ids))
    if not ids:
        return []
    return search_runs(client, ids, filter_string, view="all" if deleted_too else "active")


def active_experiments(client: MlflowClient) -> list[Experiment]:
    """Every active experiment (paged)."""

    return search_experiments(client)


def experiment_by_name(client: MlflowClient, name: str) -> Experiment:
    """The active experiment ``name``.

    Raises:
        LifecycleError: No such experiment, or it is deleted (the message lists known names).
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "active":
        return exp
    if exp is not None:
        raise LifecycleError(
            f"experiment {name!r} is deleted (archived); restore it first with "
            f"`mlflow experiments restore --experiment-id {exp.experiment_id}`."
        )
    names = sorted(e.name for e in active_experiments(client))
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    raise LifecycleError(
        f"experiment {name!r} does not exist in this tracking store; the experiments are: "
        f"{shown or 'none'}. Pass one of them to --experiment (or check --tracking-uri)."
    )


def _run_label(run: Run, experiments: dict[str, str]) -> str:
    exp = experiments.get(run.info.experiment_id, run.info.experiment_id)
    return f"run {run.info.run_id} ({exp}/{run.info.run_name}, {run.info.status})"


def _exp_names(client: MlflowClient) -> dict[str, str]:
    return {e.experiment_id: e.name for e in active_experiments(client)}


# -- archive ----------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "experiment"


def _check_export_dir(path: Path) -> None:
    target = path if path.exists() else path.parent
    if path.exists() and not path.is_dir():
        raise LifecycleError(
            f"--export-csv {path} is a file, not a directory; pass a directory for the CSVs."
        )
    if not target.is_dir() or not os.access(target, os.W_OK):
        raise LifecycleError(
            f"--export-csv {path}: cannot write there ({target} does not exist or is not "
            "writable); pass a writable directory. Nothing was archived."
        )


def export_runs_csv(client: MlflowClient, experiment: Experiment, path: Path) -> int:
    """Write every run of ``experiment`` (deleted ones too) to ``path``; returns the count.

    Columns as ``mlflow experiments csv`` writes them: run info, then ``params.*``,
    ``metrics.*`` and ``tags.*`` (sorted).
    """
    runs = search_all(client, [experiment.experiment_id], deleted_too=True)
    info = [
        "run_id",
        "run_name",
        "experiment_id",
        "status",
        "lifecycle_stage",
        "start_time",
        "end_time",
        "artifact_uri",
    ]
    params = sorted({k for r in runs for k in r.data.params})
    metrics = sorted({k for r in runs for k in r.data.metrics})
    tags = sorted({k for r in runs for k in r.data.tags})
    header = info + [f"params.{k}" for k in params]
    header += [f"metrics.{k}" for k in metrics] + [f"tags.{k}" for k in tags]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in runs:
            row: list[Any] = [getattr(r.info, k) for k in info]
            row += [r.data.params.get(k, "") for k in params]
            row += [r.data.metrics.get(k, "") for k in metrics]
            row += [r.data.tags.get(k, "") for k in tags]
            w.writerow(row)
    return len(runs)


def plan_archive(
    client: MlflowClient,
    *,
    cutoff_ms: int,
    older_than: str,
    keep_best: bool = False,
    export_dir: Path | None = None,
) -> Plan:
    """Soft-delete the experiments with no run activity since ``cutoff_ms``.

    An experiment is idle when it was created and last updated before the cutoff and none
    of its runs (deleted ones included) started, ended or logged a metric since.
    """
    if export_dir is not None:
        _check_export_dir(export_dir)
    exps = [e for e in active_experiments(client) if e.experiment_id != _DEFAULT_EXPERIMENT]
    ids = [e.experiment_id for e in exps]
    # Three searches find every experiment with recent activity, however many old runs
    # the store holds: recent starts, recent ends, and RUNNING runs with recent metrics.
    busy = {
        r.info.experiment_id
        for f in (f"attributes.start_time >= {cutoff_ms}", f"attributes.end_time >= {cutoff_ms}")
        for r in search_all(client, ids, f, deleted_too=True)
    }
    busy |= {
        r.info.experiment_id
        for r in search_all(client, ids, "attributes.status = 'RUNNING'", deleted_too=True)
        if run_activity(r) >= cutoff_ms
    }
    idle = [
        e
        for e in exps
        if e.experiment_id not in busy
        and max(e.creation_time or 0, e.last_update_time or 0) < cutoff_ms
    ]
    plan = Plan(
        "archive",
        f"archive (soft-delete) experiments with no run activity in the last {older_than} "
        f"(since {fmt_ms(cutoff_ms)})",
    )
    if keep_best and idle:
        kept = {
            r.info.experiment_id
            for r in search_all(client, [e.experiment_id for e in idle], _BEST_FILTER)
        }
        for e in idle:
            if e.experiment_id in kept:
                plan.notes.append(
                    f"kept experiment {e.experiment_id} ({e.name}): it holds a run tagged "
                    f"{contract.BEST}=true (--keep-tagged best)"
                )
        idle = [e for e in idle if e.experiment_id not in kept]
    plan.targets = [
        f"experiment {e.experiment_id} ({e.name}), last updated {fmt_ms(e.last_update_time)}"
        for e in idle
    ]

    def execute(report: Callable[[str], None]) -> None:
        # Export everything first: a failed export leaves every experiment in place.
        if export_dir is not None:
            export_dir.mkdir(parents=True, exist_ok=True)
            for e in idle:
                path = export_dir / f"{e.experiment_id}-{_slug(e.name)}.csv"
                n = export_runs_csv(client, e, path)
                report(f"exported {n} runs of experiment {e.experiment_id} ({e.name}) to {path}")
        for e in idle:
            client.delete_experiment(e.experiment_id)
            report(f"archived experiment {e.experiment_id} ({e.name})")

    plan.execute = execute
    if idle:
        plan.epilogue.append(
            "restore one with: mlflow experiments restore --experiment-id <id> "
            "(until `lifecycle gc` removes it for good)"
        )
    return plan


# -- prune-failed -----------------------------------------------------------------------------
def _children(client: MlflowClient, experiment_ids: Iterable[str]) -> dict[str, list[Run]]:
    """``parent run id -> active child runs`` in ``experiment_ids`` (one paged search)."""
    out: dict[str, list[Run]] = {}
    for r in search_all(client, experiment_ids, _PARENT_FILTER):
        out.setdefault(r.data.tags[contract.PARENT_RUN_ID], []).append(r)
    return out


def plan_prune_failed(
    client: MlflowClient,
    *,
    cutoff_ms: int,
    older_than: str,
    experiment: str | None = None,
    include_killed: bool = False,
) -> Plan:
    """Soft-delete FAILED (and KILLED) runs whose last activity is before ``cutoff_ms``.

    A parent run is pruned only together with all of its active children. A run in a cycle
    of parent runs (one that names itself, A -> B -> A) is left alone with a warning: which
    run is whose child is unknowable, so no order is safe.
    """
    names = _exp_names(client)
    ids = [experiment_by_name(client, experiment).experiment_id] if experiment else list(names)
    statuses = ["FAILED", "KILLED"] if include_killed else ["FAILED"]
    candidates = [
        r
        for s in statuses
        # start_time < cutoff narrows the search; the activity check below is the rule.
        for r in search_all(
            client, ids, f"attributes.status = '{s}' and attributes.start_time < {cutoff_ms}"
        )
        if run_activity(r) < cutoff_ms
    ]
    by_id = {r.info.run_id: r for r in candidates}
    kids = _children(client, {r.info.experiment_id for r in candidates})
    lineage = Lineage([*candidates, *(k for ks in kids.values() for k in ks)])
    looped = sorted(rid for rid in by_id if lineage.on_cycle(rid))
    prune = set(by_id) - set(looped)
    spared: dict[str, list[str]] = {}
    changed = True
    while changed:  # sparing a child run spares its parent, up the tree
        changed = False
        for rid in sorted(prune):
            alive = [k.info.run_id for k in kids.get(rid, []) if k.info.run_id not in prune]
            if alive:
                prune.discard(rid)
                spared[rid] = alive
                changed = True

    def depth(rid: str) -> int:
        n = 0
        for parent in lineage.ancestors(rid):
            if parent not in prune:
                break
            n += 1
        return n

    # Children first: an interrupted prune never leaves a deleted parent over live children.
    order = sorted(prune, key=lambda rid: (-depth(rid), rid))
    what = " and ".join(statuses)
    scope = f"experiment {experiment!r}" if experiment else "all experiments"
    plan = Plan(
        "prune-failed",
        f"prune (soft-delete) {what} runs in {scope} with no activity in the last "
        f"{older_than} (since {fmt_ms(cutoff_ms)})",
    )
    plan.targets = [
        f"{_run_label(by_id[rid], names)}, last activity {fmt_ms(run_activity(by_id[rid]))}"
        for rid in order
    ]
    plan.notes = [
        f"kept parent run {rid}: {len(alive)} of its child runs are not pruned "
        f"({', '.join(alive[:5])}{' ...' if len(alive) > 5 else ''})"
        for rid, alive in sorted(spared.items())
    ]
    plan.warnings = [
        f"skipped {_run_label(by_id[rid], names)}: {lineage.problem(rid)}" for rid in looped
    ]

    def execute(report: Callable[[str], None]) -> None:
        for rid in order:
            client.delete_run(rid)
            report(f"pruned {_run_label(by_id[rid], names)}")

    plan.execute = execute
    if order:
        plan.epilogue.append(
            "restore one with: mlflow runs restore --run-id <id> "
            "(until `lifecycle gc` removes it for good)"
        )
    return plan


# -- close-stale ------------------------------------------------------------------------------
def plan_close_stale(
    client: MlflowClient,
    *,
    cutoff_ms: int,
    older_than: str,
    status: str = "KILLED",
) -> Plan:
    """End as ``status`` the RUNNING runs whose last activity is before ``cutoff_ms``.

    A run's last activity is the latest of its start time and metric timestamps and, for a
    parent run (a sweep), the last activity of its children, recursively.
    """
    if status not in ("KILLED", "FAILED"):
        raise LifecycleError(f"--status {status!r} is not KILLED or FAILED; pass one of those.")
    names = _exp_names(client)
    running = search_all(client, names, "attributes.status = 'RUNNING'")
    kids = _children(client, {r.info.experiment_id for r in running}) if running else {}
    memo: dict[str, int] = {}

    def activity(run: Run, seen: frozenset[str] = frozenset()) -> int:
        rid = run.info.run_id
        if rid not in memo:
            own = run_activity(run)
            below = [
                activity(k, seen | {rid}) for k in kids.get(rid, []) if k.info.run_id not in seen
            ]
            memo[rid] = max([own, *below])
        return memo[rid]

    stale = sorted(
        ((r, activity(r)) for r in running if activity(r) < cutoff_ms),
        key=lambda x: x[0].info.run_id,
    )
    plan = Plan(
        "close-stale",
        f"close as {status} the RUNNING runs with no activity in the last {older_than} "
        f"(since {fmt_ms(cutoff_ms)})",
    )
    plan.targets = [
        f"{_run_label(r, names)}, last activity {fmt_ms(a)}"
        + (f" (with {len(kids[r.info.run_id])} child runs)" if r.info.run_id in kids else "")
        for r, a in stale
    ]
    fresh = len(running) - len(stale)
    if fresh:
        plan.notes.append(f"left {fresh} RUNNING runs with recent activity alone")

    def execute(report: Callable[[str], None]) -> None:
        when = fmt_ms(now_ms())
        for r, a in stale:
            reason = (
                f"closed as {status} by `runner.lifecycle close-stale --older-than "
                f"{older_than}` at {when}: still RUNNING with no activity (start, metrics"
                f"{', child runs' if r.info.run_id in kids else ''}) since {fmt_ms(a)}; "
                "its process most likely died without ending the run."
            )
            # Tag first: a crash between the two calls leaves the run RUNNING, so the next
            # close-stale picks it up again.
            client.set_tag(r.info.run_id, contract.CLOSED_REASON, reason)
            client.set_terminated(r.info.run_id, status=status, end_time=max(a, 1))
            report(f"closed {_run_label(r, names)} as {status}")

    plan.execute = execute
    return plan


# -- tag-best ---------------------------------------------------------------------------------
def plan_tag_best(
    client: MlflowClient,
    *,
    experiment: str,
    metric: str,
    top: int = 1,
    direction: str | None = None,
    sweep: str | None = None,
) -> Plan:
    """Tag the ``top`` FINISHED runs of an experiment (or of one sweep) by ``metric``.

    Runs of the selection that are no longer best, and unfinished runs that carry the tag,
    lose it. Sweep parent runs are never ranked.
    """
    from runner.tracking.reader import require_run

    exp = experiment_by_name(client, experiment)
    scope = f"experiment {experiment!r}"
    flt = ""
    if sweep:
        parent = require_run(
            client,
            sweep,
            error=LifecycleError,
            message=(
                f"--sweep {sweep!r} is not a run in this tracking store; pass the run id of a "
                "sweep's parent run (tag runner.kind=sweep)."
            ),
        )
        if parent.info.experiment_id != exp.experiment_id:
            raise LifecycleError(
                f"--sweep {sweep} belongs to experiment id {parent.info.experiment_id}, not to "
                f"{experiment!r}; pass the sweep's own experiment."
            )
        flt = f"tags.`{contract.PARENT_RUN_ID}` = '{sweep}'"
        scope += f", sweep {sweep}"
    runs = [r for r in search_all(client, [exp.experiment_id], flt) if r.info.run_id != sweep]
    ranked = [
        r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(contract.KIND) != "sweep"
    ]
    if not ranked:
        raise LifecycleError(f"{scope} has no FINISHED run to rank; nothing was tagged.")
    stray = [r for r in runs if r not in ranked and contract.BEST in r.data.tags]
    preview = tag_best(client, ranked, metric=metric, direction=direction, top=top, dry_run=True)
    plan = Plan(
        "tag-best",
        f"tag the top {top} FINISHED runs of {scope} by {metric} with {contract.BEST}=true",
        destructive=False,
    )
    plan.targets = [f"tag {rid}" for rid in preview.tagged]
    plan.targets += [f"untag {rid} (no longer best)" for rid in preview.untagged]
    plan.targets += [f"untag {r.info.run_id} ({r.info.status}, not ranked)" for r in stray]
    unchanged = sorted(set(preview.best) - set(preview.tagged))
    plan.notes = [f"best: {', '.join(preview.best)}"]
    if unchanged:
        plan.notes.append(f"already tagged: {', '.join(unchanged)}")

    def execute(report: Callable[[str], None]) -> None:
        res = tag_best(client, ranked, metric=metric, direction=direction, top=top)
        for rid in res.tagged:
            report(f"tagged run {rid} {contract.BEST}=true")
        for rid in res.untagged:
            report(f"untagged run {rid}")
        for r in stray:
            client.delete_tag(r.info.run_id, contract.BEST)
            report(f"untagged run {r.info.run_id} ({r.info.status})")

    plan.execute = execute
    return plan
