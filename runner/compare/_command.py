"""``python -m runner.compare``: compare the runs of an experiment, a sweep, or sweeps.

One command answers "which configuration won, by how much, and what mattered": a terminal
table of the selected runs (only the params that vary), a CSV of everything, a self-contained
HTML report with plots (:mod:`runner.compare.report`), and best-run tagging
(:mod:`runner.tracking.best`). ``--sweep`` takes ids or names and repeats; with two or more
sweeps (or ``--all-sweeps``) a table of sweeps comes first (:mod:`runner.compare.sweeps`).

The selection is fetched with MLflow's paged search (``MlflowClient.search_runs`` with page
tokens): params, metrics and tags of every run come with the pages, never one request per
run. Only the HTML report's learning curves read metric histories, for the top few runs.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.cli import add_tracking_uri, fail
from runner.compare.ranking import (
    CompareError,
    default_metrics,
    fmt_param,
    fmt_value,
    iso_time,
    objective_of,
    order_runs,
    resolve_sort,
    varying_params,
)
from runner.compare.sweeps import (
    SweepSummary,
    log_params,
    rank_sweeps,
    render_sweeps_table,
    resolve_sweeps,
    summarise,
)
from runner.compare.sweeps import experiment_ids as _experiment_ids
from runner.errors import RunnerError
from runner.tracking.reader import PAGE_SIZE

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["CSV_FIXED_COLUMNS", "main", "render_table", "select_runs", "write_csv"]

#: The CSV's leading columns; ``params.<key>`` (sorted) and ``metrics.<key>`` (sorted) follow.
CSV_FIXED_COLUMNS = (
    "rank",
    "run_id",
    "run_name",
    "status",
    "experiment_id",
    "parent_run_id",
    "start_time",
    "end_time",
    "duration_s",
    "best",
)


#: Terminal table rows by default: rendering 5,000 rows with rich takes longer than fetching
#: them (benchmarks/bench_compare.py --all-rows); --csv and --html carry every run.
DEFAULT_LIMIT = 50


# -- selection ----------------------------------------------------------------------------


def select_runs(
    client: MlflowClient,
    *,
    experiment: str | None = None,
    sweep: str | None = None,
    filter_string: str = "",
    page_size: int = PAGE_SIZE,
    warn: Callable[[str], None] | None = None,
) -> list[Run]:
    """The selected runs (any status, not deleted), sweep parents left out.

    With ``sweep``, a broken chain of parent runs above the sweep (a cycle, a missing or
    garbled parent) is reported through ``warn``; the runs of a cycle through the sweep
    (the sweep naming itself, or a child that is also its ancestor) are left out.

    Args:
        client: The client of the tracking store.
        experiment: An experiment name (or id); by default every experiment (or the
            sweep's).
        sweep: A sweep's parent run id: its child runs.
        filter_string: More conditions in MLflow's search syntax.
        page_size: Runs per search request.
        warn: Called with each warning (default: ``warning: ...`` on stderr).

    Raises:
        CompareError: The experiment or the run does not exist, or the filter is invalid.
    """
    from runner.tracking.reader import ReadError, get_run, search_runs

    conditions = [filter_string.strip()] if filter_string and filter_string.strip() else []
    sweep_run: Run | None = None
    if sweep is not None:
        if not re.fullmatch(r"[0-9a-zA-Z_-]+", sweep):
            raise CompareError(f"{sweep!r} is not a run id (32 hex digits); pass a run id.")
        try:
            parent = get_run(client, sweep)
        except ReadError as e:
            parent, why = None, f" ({e})"
        else:
            why = ""
        if parent is None:
            raise CompareError(
                f"run {sweep!r} does not exist in this tracking store{why}. Pass the sweep's "
                "parent run id (its run name starts with 'sweep'), or check the store "
                "(--tracking-uri)."
            )
        sweep_run = parent
        conditions.insert(0, f"tags.`{contract.PARENT_RUN_ID}` = '{sweep}'")
        ids = (
            _experiment_ids(client, experiment)
            if experiment is not None
            else [parent.info.experiment_id]
        )
    else:
        ids = _experiment_ids(client, experiment)
    if not ids:
        return []
    try:
        runs: list[Run] = search_runs(client, ids, " and ".join(conditions), page_size=page_size)
    except ReadError as e:
        raise CompareError(
            f"MLflow rejected the filter {filter_string!r}: {e}. "
            "The syntax is MLflow's search syntax, e.g. \"params.model = 'xgb' and "
            'metrics.val_accuracy > 0.9" (https://mlflow.org/docs/latest/search-runs.html).'
        ) from None
    if sweep_run is not None:
        runs = _without_loops(sweep_run, runs, warn or _warn, lookup=lambda i: get_run(client, i))
    # Sweep parents carry no params or metrics of their own: they would be empty rows.
    return [r for r in runs if r.data.tags.get(contract.KIND) != "sweep"]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _without_loops(
    sweep: Run,
    children: list[Run],
    warn: Callable[[str], None],
    *,
    lookup: Callable[[str], Run | None],
) -> list[Run]:
    """``children`` less the runs of a parent cycle through ``sweep``; warns of problems."""
    from runner.tracking.reader import Lineage

    sid = sweep.info.run_id
    lineage = Lineage([sweep], lookup=lookup)
    problem = lineage.problem(sid)
    if problem is None:
        return children
    if problem.kind != "cycle" or problem.run_id != sid:
        warn(f"sweep {sid}: {problem} (its runs are compared all the same)")
        return children
    loop = set(problem.cycle)
    left_out = sorted(r.info.run_id for r in children if r.info.run_id in loop)
    also = f"; left out of its runs: {', '.join(left_out)}" if left_out else ""
    warn(f"sweep {sid}: {problem}{also}")
    return [r for r in children if r.info.run_id not in loop]


# -- columns and ranking ------------------------------------------------------------------


# -- outputs ------------------------------------------------------------------------------


def render_table(
    runs: Sequence[Run],
    *,
    params: Sequence[str],
    metrics: Sequence[str],
    title: str,
    file: Any = None,
    sweep_of: dict[str, str] | None = None,
) -> None:
    """Print the ranked table with rich (the run name, status, varying params, metrics).

    ``sweep_of`` (run id: sweep name) adds a ``sweep`` column (several sweeps compared).
    Long float params are rounded (:func:`~runner.compare.ranking.fmt_param`).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = file or sys.stdout
    # Not a terminal (a pipe, a file, a test): no width limit, so no value gets cut.
    tty = hasattr(out, "isatty") and out.isatty()
    console = Console(file=out, width=None if tty else 100_000, highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("run")
    if sweep_of is not None:
        table.add_column("sweep")
    table.add_column("run_id")
    table.add_column("status")
    for p in params:
        table.add_column(p, overflow="fold")
    for m in metrics:
        table.add_column(m, justify="right")
    status_style = {"FINISHED": "", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}
    for i, r in enumerate(runs, 1):
        status = r.info.status
        style = status_style.get(status, "")
        sweep = [Text(_short(sweep_of.get(r.info.run_id, "")))] if sweep_of is not None else []
        # Text, not str: rich reads a str cell as its markup, and a stranger's run name
        # such as "x[/b]" would stop the command (MarkupError) or "[link=...]" add a link.
        table.add_row(
            str(i),
            Text(r.info.run_name or ""),
            *sweep,
            Text(r.info.run_id[:8]),
            f"[{style}]{status}[/]" if style else Text(status),
            *(Text(fmt_param(r.data.params.get(p))) for p in params),
            *(fmt_value(r.data.metrics.get(m)) for m in metrics),
        )
    # The title on its own line: as the table's title it would wrap to the table's width.
    console.print(title, markup=False)
    console.print(table)


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def write_csv(path: Path, runs: Sequence[Run]) -> list[str]:
    """Write every run, every param and metric, one row a run, in ``runs``' order.

    Columns: :data:`CSV_FIXED_COLUMNS`, then ``params.<key>`` sorted by key, then
    ``metrics.<key>`` sorted by key (each metric's latest value, full precision). A run
    without a param or metric has an empty cell.

    Returns:
        The header.
    """
    params = sorted({k for r in runs for k in r.data.params})
    metrics = sorted({k for r in runs for k in r.data.metrics})
    header = [*CSV_FIXED_COLUMNS, *(f"params.{k}" for k in params)]
    header += [f"metrics.{k}" for k in metrics]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, r in enumerate(runs, 1):
            info = r.info
            end, start = info.end_time, info.start_time
            dur = f"{(end - start) / 1000:.3f}" if end and start else ""
            row = [
                i,
                info.run_id,
                info.run_name or "",
                info.status,
                info.experiment_id,
                r.data.tags.get(contract.PARENT_RUN_ID, ""),
                iso_time(start),
                iso_time(end),
                dur,
                r.data.tags.get(contract.BEST, ""),
            ]
            row += [r.data.params.get(k, "") for k in params]
            row += [repr(r.data.metrics[k]) if k in r.data.metrics else "" for k in metrics]
            w.writerow(row)
    return header


# -- the command --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner.compare",
        description=(
            "Compare MLflow runs of an experiment, a sweep, or sweeps against each other: a "
            "ranked table of the params that vary and the chosen metrics (and, with two or "
            "more sweeps, a table of sweeps); optionally a CSV, a self-contained HTML report "
            "and best-run tagging (tags.runner.best = 'true')."
        ),
    )
    scope = p.add_argument_group("selection")
    scope.add_argument("--experiment", metavar="NAME", help="an experiment name (or id)")
    scope.add_argument(
        "--sweep",
        action="append",
        metavar="SWEEP",
        help=(
            "a sweep: its parent run id, study name or parent run name; repeat it "
            "(--sweep A --sweep B) to compare sweeps against each other"
        ),
    )
    scope.add_argument(
        "--all-sweeps",
        action="store_true",
        help="every sweep of --experiment NAME, compared against each other",
    )
    scope.add_argument(
        "--filter",
        default="",
        metavar="EXPR",
        help="MLflow search syntax, e.g. \"params.model = 'xgb'\"",
    )
    rank = p.add_argument_group("ranking and columns")
    rank.add_argument(
        "--sort",
        metavar="metrics.X",
        help="metrics.<name> or params.<name> (default: the runs' objective)",
    )
    order = rank.add_mutually_exclusive_group()
    order.add_argument("--desc", action="store_true", help="largest first")
    order.add_argument("--asc", action="store_true", help="smallest first")
    rank.add_argument(
        "--top", type=int, metavar="N", help="keep the N best runs (table, report, --tag-best)"
    )
    rank.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"terminal table rows at most (default {DEFAULT_LIMIT}; 0: all)",
    )
    rank.add_argument(
        "--metrics",
        metavar="A,B",
        help="metrics to show (default: the objective, 3 other val_* metrics, fit_time_s)",
    )
    outs = p.add_argument_group("outputs")
    outs.add_argument("--csv", type=Path, metavar="FILE", help="write every run to a CSV")
    outs.add_argument("--html", type=Path, metavar="FILE", help="write an HTML report")
    outs.add_argument(
        "--tag-best",
        action="store_true",
        help="tag the best run (--top K: runs) runner.best=true; untag the others",
    )
    outs.add_argument("--fail-empty", action="store_true", help="exit 1 when no run is selected")
    outs.add_argument(
        "--register-best",
        metavar="NAME",
        help="register the best run's logged model as a new version of registered model NAME",
    )
    outs.add_argument(
        "--alias",
        default="champion",
        help="the alias --register-best points at the new version (default: champion)",
    )
    add_tracking_uri(p, "the store holding the runs")
    return p


def _describe(args: argparse.Namespace, sweeps: Sequence[SweepSummary] = ()) -> str:
    parts = []
    if args.experiment:
        parts.append(f"experiment {args.experiment!r}")
    if len(sweeps) > 1:
        every = "every sweep" if args.all_sweeps else "sweeps"
        parts.append(f"{every} ({', '.join(repr(s.name) for s in sweeps)})")
    elif args.sweep:
        parts.append(f"sweep {args.sweep[0]}")
    elif args.all_sweeps:
        parts.append("its one sweep")
    if args.filter:
        parts.append(f"filter {args.filter!r}")
    return ", ".join(parts) or "all experiments"


def _run(args: argparse.Namespace) -> int:
    from runner.tracking.best import tag_best
    from runner.tracking.store import command_uri, connect, public_uri

    if args.top is not None and args.top < 1:
        raise CompareError(f"--top is {args.top}; it must be at least 1.")
    if args.limit < 0:
        raise CompareError(f"--limit is {args.limit}; it must be 0 (all rows) or more.")
    if args.all_sweeps and args.sweep:
        raise CompareError(
            "--all-sweeps takes every sweep of --experiment; --sweep names some: pass one "
            "of the two."
        )
    uri = command_uri(args.tracking_uri)
    client = connect(uri)
    parents = (
        resolve_sweeps(
            client, args.sweep or [], experiment=args.experiment, all_sweeps=args.all_sweeps
        )
        if args.sweep or args.all_sweeps
        else []
    )
    by_sweep: dict[str, list[Run]] = {}
    for parent in parents if len(parents) > 1 else []:
        by_sweep[parent.info.run_id] = select_runs(
            client, experiment=args.experiment, sweep=parent.info.run_id, filter_string=args.filter
        )
    if by_sweep:
        runs = [r for rs in by_sweep.values() for r in rs]
    else:
        one = parents[0].info.run_id if parents else None
        runs = select_runs(client, experiment=args.experiment, sweep=one, filter_string=args.filter)
    ascending = True if args.asc else (False if args.desc else None)
    sort = resolve_sort(runs, args.sort, ascending=ascending)
    ordered = order_runs(runs, sort)
    summaries = rank_sweeps(
        [summarise(p, by_sweep[p.info.run_id], sort) for p in parents if by_sweep], sort
    )
    what = _describe(args, summaries)
    objective, _ = objective_of(runs)
    if args.metrics:
        metrics = [m.strip().removeprefix("metrics.") for m in args.metrics.split(",")]
        metrics = [m for m in metrics if m]
    else:
        metrics = default_metrics(runs, objective, sort)
    params = varying_params(runs)
    kept = ordered[: args.top] if args.top else ordered
    shown = kept[: args.limit] if args.limit > 0 else kept
    by = f", by {sort.label} ({sort.direction})" if sort else ""
    title = f"{len(shown)} of {len(runs)} runs, {what}{by}"
    sweep_of: dict[str, str] | None = None
    if summaries:
        best_by = f", by best {sort.label} ({sort.direction})" if sort else ""
        render_sweeps_table(summaries, sort=sort, title=f"{len(summaries)} sweeps{best_by}")
        print()
        sweep_of = {r.info.run_id: s.name for s in summaries for r in s.runs}
    render_table(shown, params=params, metrics=metrics, title=title, sweep_of=sweep_of)
    if len(shown) < len(kept):
        print(
            f"... and {len(kept) - len(shown)} more (--limit 0 shows all; --csv writes all)",
        )
    if not runs:
        print(
            f"no runs selected ({what}, store {public_uri(uri)}).",
            file=sys.stderr,
        )
    if args.csv:
        write_csv(args.csv, ordered)
        print(f"wrote {len(ordered)} runs to {args.csv}", file=sys.stderr)
    if args.tag_best and runs:
        if sort is None or sort.kind != "metrics":
            raise CompareError(
                "--tag-best needs a metric to rank by: the runs have no objective metric; "
                "pass --sort metrics.<name>."
            )
        res = tag_best(
            client, ordered, metric=sort.key, direction=sort.direction, top=args.top or 1
        )
        names = {r.info.run_id: r.info.run_name for r in runs}
        print(
            f"runner.best=true on {', '.join(f'{names[i]} ({i[:8]})' for i in res.best)}"
            f"; tagged {len(res.tagged)}, untagged {len(res.untagged)}",
            file=sys.stderr,
        )
        for r in runs:  # the report shows the tags as they are now
            if r.info.run_id in res.best:
                r.data.tags[contract.BEST] = "true"
            else:
                r.data.tags.pop(contract.BEST, None)
    if args.register_best and runs:
        _register_best(client, ordered, sort, args)
    if args.html:
        from runner.compare.report import write_html

        write_html(
            args.html,
            client=client,
            runs=ordered,
            params=params,
            metrics=metrics,
            sort=sort,
            top=args.top,
            title=f"Runs of {what}",
            sweeps=summaries,
            log_params=log_params(parents[0]) if len(parents) == 1 else set(),
        )
        print(f"wrote the report to {args.html}", file=sys.stderr)
    if not runs and args.fail_empty:
        return 1
    return 0


def _register_best(
    client: MlflowClient, ordered: Sequence[Run], sort: Any, args: argparse.Namespace
) -> None:
    """``--register-best NAME``: the best run's model as a new version; ``--alias`` on it."""
    from runner.tracking.best import rank
    from runner.tracking.registry import describe, register_best

    if sort is None or sort.kind != "metrics":
        raise CompareError(
            "--register-best needs a metric to rank by: the runs have no objective metric; "
            "pass --sort metrics.<name>."
        )
    best = rank(ordered, metric=sort.key, direction=sort.direction)[0]
    print(describe(register_best(client, best.info.run_id, args.register_best,
                                 alias=args.alias)), file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m runner.compare``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except RunnerError as e:
        return fail(e)
    except OSError as e:
        print(f"error: cannot write {e.filename}: {e.strerror}.", file=sys.stderr)
        return 2
