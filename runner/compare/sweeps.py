"""Sweeps as units of comparison: finding them by id or name, and one summary row each.

A sweep is a parent run tagged ``runner.kind=sweep`` (:mod:`runner.contract`): an Optuna
study's parent (``runner.sweeper=optuna``; params ``study_name``, ``sampler``, ``pruner``,
``space``) or a grid sweep's (no sweeper tag). ``--sweep`` takes a parent's run id, its run
name or its study name; ``--all-sweeps`` takes every parent of an experiment.

Names are matched here, in Python, against the experiment's parent runs (one paged search):
a name is never pasted into an MLflow filter, so any text is a safe name.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.compare.ranking import (
    CompareError,
    Sort,
    finite_float,
    fmt_duration,
    fmt_param,
    fmt_value,
    iso_time,
    order_runs,
    varying_params,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "SweepSummary",
    "experiment_ids",
    "log_params",
    "render_sweeps_table",
    "resolve_sweeps",
    "summarise",
    "sweep_parents",
]

#: Sweeps listed at most in an error message (the rest are counted).
_LISTED = 20
#: What a trial's state (``runner.trial_state``) or a grid job's run status reads as.
_STATE_WORDS = {
    "COMPLETE": "complete",
    "FINISHED": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "FAILED": "failed",
    "KILLED": "killed",
    "RUNNING": "running",
    "WAITING": "waiting",
    "SCHEDULED": "waiting",
}
_STATE_ORDER = ("complete", "pruned", "failed", "killed", "running", "waiting")
_RUN_ID = re.compile(r"[0-9a-zA-Z_-]+")


def experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The id of ``experiment`` (a name or id), or of every active experiment when None.

    Raises:
        CompareError: No such experiment (the message lists the store's experiments).
    """
    from runner.tracking.reader import find_experiment, search_experiments

    if experiment is None:
        return [e.experiment_id for e in search_experiments(client)]
    exp = find_experiment(client, experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in search_experiments(client))
        raise CompareError(
            f"experiment {experiment!r} does not exist in this tracking store; it has: "
            f"{', '.join(repr(n) for n in names) or 'no experiments'}. Check the name, or "
            "the store (--tracking-uri)."
        )
    return [str(exp.experiment_id)]


def sweep_parents(client: MlflowClient, ids: Sequence[str]) -> list[Run]:
    """The sweep parents (active runs tagged ``runner.kind=sweep``) of experiments ``ids``,
    oldest first."""
    from runner.tracking.reader import search_runs

    if not ids:
        return []
    runs = search_runs(client, list(ids), f"tags.`{contract.KIND}` = 'sweep'")
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def study_name(parent: Run) -> str:
    """The sweep's name: the study name of an Optuna parent, else its run name (or id)."""
    return parent.data.params.get("study_name") or parent.info.run_name or parent.info.run_id


def _listing(client: MlflowClient, parents: Sequence[Run], experiment: str | None) -> str:
    if not parents:
        where = f"experiment {experiment!r}" if experiment else "this tracking store"
        return f"{where} has no sweeps (parent runs tagged {contract.KIND}=sweep)"
    names: dict[str, str] = {}
    if experiment is None:  # sweeps of several experiments: say which is which
        from runner.tracking.reader import search_experiments

        names = {e.experiment_id: e.name for e in search_experiments(client)}
    items = []
    for p in parents[:_LISTED]:
        where = f", experiment {names[p.info.experiment_id]!r}" if names else ""
        items.append(f"{study_name(p)!r} ({p.info.run_id}{where})")
    more = f" and {len(parents) - _LISTED} more" if len(parents) > _LISTED else ""
    where = f"experiment {experiment!r}" if experiment else "this tracking store"
    return f"the sweeps of {where} are: {', '.join(items)}{more}"


def _resolve_one(
    client: MlflowClient, ref: str, experiment: str | None, cache: dict[str, list[Run]]
) -> Run:
    from runner.tracking.reader import ReadError, get_run

    why = ""
    if _RUN_ID.fullmatch(ref):
        try:
            run = get_run(client, ref)
        except ReadError as e:
            run, why = None, f" ({e})"
        if run is not None:
            # A run id is taken as given, as before names were accepted (any run's children).
            return run
    if "parents" not in cache:
        cache["parents"] = sweep_parents(client, experiment_ids(client, experiment))
    parents = cache["parents"]
    found = [p for p in parents if ref in (p.info.run_name, p.data.params.get("study_name"))]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        ids = ", ".join(f"{p.info.run_id} (started {_started(p)}, {p.info.status})" for p in found)
        raise CompareError(
            f"the sweep name {ref!r} is ambiguous: {len(found)} sweep parent runs have it: "
            f"{ids}. Pass one of them by its run id (--sweep <run id>)."
        )
    head = (
        f"run {ref!r} does not exist in this tracking store{why}, and no sweep is named so"
        if _RUN_ID.fullmatch(ref) and len(ref) == 32
        else f"no sweep is named {ref!r} (a study name, a sweep parent's run name or run id)"
    )
    raise CompareError(
        f"{head}; {_listing(client, parents, experiment)}. Pass one of those to --sweep, "
        "or check the store (--tracking-uri)."
    )


def _started(run: Run) -> str:
    return iso_time(run.info.start_time) or "?"


def resolve_sweeps(
    client: MlflowClient,
    refs: Sequence[str],
    *,
    experiment: str | None = None,
    all_sweeps: bool = False,
) -> list[Run]:
    """The sweep parent runs named by ``refs`` (run ids, run names or study names), in the
    order given, each once; with ``all_sweeps``, every sweep of ``experiment``, oldest first.

    Raises:
        CompareError: A name matches no sweep (the message lists the experiment's sweeps)
            or several (it lists their run ids); ``all_sweeps`` without ``experiment``, or
            an experiment without sweeps.
    """
    if all_sweeps:
        if experiment is None:
            raise CompareError(
                "--all-sweeps compares every sweep of one experiment: pass --experiment NAME "
                "too (or name the sweeps with --sweep A --sweep B)."
            )
        parents = sweep_parents(client, experiment_ids(client, experiment))
        if not parents:
            raise CompareError(
                f"{_listing(client, parents, experiment)}; compare its runs with "
                f"--experiment {experiment} alone."
            )
        return parents
    cache: dict[str, list[Run]] = {}
    out: list[Run] = []
    for ref in refs:
        run = _resolve_one(client, ref.strip(), experiment, cache)
        if all(r.info.run_id != run.info.run_id for r in out):
            out.append(run)
    return out


def log_params(parent: Run | None) -> set[str]:
    """The params an Optuna parent's ``space`` param searched on a log scale
    (``tag(log, ...)``); empty for grid parents and anything else."""
    if parent is None:
        return set()
    try:
        space = json.loads(parent.data.params.get("space") or "{}")
    except ValueError:
        return set()
    if not isinstance(space, dict):
        return set()
    return {str(k) for k, v in space.items() if re.search(r"\btag\(\s*log\b", str(v), re.I)}


def _searched(parent: Run, children: Sequence[Run]) -> list[str]:
    """The params the sweep varies: an Optuna parent's space keys, else those that vary."""
    try:
        space = json.loads(parent.data.params.get("space") or "null")
    except ValueError:
        space = None
    if isinstance(space, dict) and space:
        return sorted(str(k) for k in space)
    return varying_params(children)


@dataclass
class SweepSummary:
    """One sweep's row: who it is, how its trials went, and its best run."""

    parent: Run
    runs: list[Run]
    name: str
    sampler: str
    pruner: str
    states: dict[str, int] = field(default_factory=dict)
    duration_s: float | None = None
    running: bool = False
    best: Run | None = None
    best_value: float | None = None
    best_params: dict[str, str] = field(default_factory=dict)
    log_params: set[str] = field(default_factory=set)

    @property
    def run_id(self) -> str:
        """The parent's run id."""
        return str(self.parent.info.run_id)

    @property
    def trials(self) -> str:
        """``6 complete, 1 pruned`` (``0`` when it has no runs)."""
        return ", ".join(f"{n} {s}" for s, n in self.states.items()) or "0"

    @property
    def params_text(self) -> str:
        """The best run's searched params, rounded: ``model.C=0.7257, lr=0.1``."""
        return ", ".join(f"{k}={fmt_param(v)}" for k, v in self.best_params.items()) or "-"

    @property
    def duration(self) -> str:
        """The wall time, ``(running)`` added while the parent runs."""
        text = fmt_duration(self.duration_s)
        return f"{text} (running)" if self.running else text


def summarise(parent: Run, runs: Sequence[Run], sort: Sort | None) -> SweepSummary:
    """The summary of sweep ``parent`` over its selected child ``runs``, ranked by ``sort``."""
    params = parent.data.params
    if parent.data.tags.get(contract.SWEEPER) == "optuna" or "sampler" in params:
        sampler, pruner = params.get("sampler", "?"), params.get("pruner", "none")
    else:
        sampler, pruner = "grid", "-"
    words = Counter(
        _STATE_WORDS.get(
            r.data.tags.get(contract.TRIAL_STATE) or r.info.status, str(r.info.status).lower()
        )
        for r in runs
    )
    states = {s: words[s] for s in _STATE_ORDER if words.get(s)}
    states.update({s: n for s, n in sorted(words.items()) if s not in states})
    start = parent.info.start_time
    end = parent.info.end_time
    running = parent.info.status == "RUNNING" or not end
    if running:  # no end yet: as far as its runs got
        end = max((r.info.end_time or r.info.start_time or 0 for r in runs), default=0) or None
    duration = (end - start) / 1000 if start and end and end >= start else None
    summary = SweepSummary(
        parent=parent,
        runs=list(runs),
        name=study_name(parent),
        sampler=sampler,
        pruner=pruner,
        states=states,
        duration_s=duration,
        running=running,
        log_params=log_params(parent),
    )
    ordered = order_runs(runs, sort) if sort is not None else []
    if ordered:
        best = ordered[0]
        value = finite_float(getattr(best.data, sort.kind).get(sort.key)) if sort else None
        if sort is not None and sort.kind == "metrics" and value is None:
            return summary  # no run of the sweep has the metric
        summary.best = best
        summary.best_value = value if sort is not None and sort.kind == "metrics" else None
        summary.best_params = {
            k: best.data.params[k] for k in _searched(parent, runs) if k in best.data.params
        }
    return summary


def rank_sweeps(summaries: Sequence[SweepSummary], sort: Sort | None) -> list[SweepSummary]:
    """Best sweep first (by its best value); sweeps without one last, oldest first."""
    sign = -1.0 if sort is not None and sort.direction == "maximize" else 1.0
    have = [s for s in summaries if s.best_value is not None]
    rest = [s for s in summaries if s.best_value is None]
    have.sort(key=lambda s: sign * (s.best_value or 0.0))  # stable: ties keep the given order
    return have + rest


def render_sweeps_table(
    summaries: Sequence[SweepSummary], *, sort: Sort | None, title: str, file: Any = None
) -> None:
    """Print the table of sweeps with rich: one row a sweep, the best first."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = file or sys.stdout
    tty = hasattr(out, "isatty") and out.isatty()
    console = Console(file=out, width=None if tty else 100_000, highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("sweep")
    table.add_column("run_id")
    table.add_column("sampler")
    table.add_column("pruner")
    table.add_column("trials")
    table.add_column(
        f"best {sort.key}" if sort and sort.kind == "metrics" else "best", justify="right"
    )
    table.add_column("best params", overflow="fold")
    table.add_column("duration", justify="right")
    for i, s in enumerate(summaries, 1):
        # Text, not str: rich would read a stranger's sweep name as its markup.
        table.add_row(
            str(i),
            *(Text(t) for t in (s.name, s.run_id[:8], s.sampler, s.pruner, s.trials)),
            fmt_value(s.best_value),
            Text(s.params_text),
            s.duration,
        )
    console.print(title, markup=False)
    console.print(table)
