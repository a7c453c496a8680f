"""What the runner prints when a run or a sweep ends: the best, the counts, where to look.

One format for the three places that print it: the grid sweeper
(``hydra_plugins/runner_grid_sweeper``), the Optuna sweep (``OptunaSweep._summary``) and a
single run (the MLflow callback). The lines go to stderr as a plain block, after Hydra's last
job line; ``hydra.sweeper.progress=none`` (or ``RUNNER_PROGRESS=none``) keeps them quiet.
Only URL strings are built here: nothing imports MLflow.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from runner.tracking.redact import redact_text
from runner.tracking.store import public_uri

__all__ = [
    "PROGRESS_ENV",
    "Parent",
    "SweepSummary",
    "compare_command",
    "emit",
    "fmt_duration",
    "fmt_number",
    "format_run",
    "format_sweep",
    "is_quiet",
    "progress_mode",
    "run_url",
    "sweep_parents",
    "where_to_look",
]

#: The environment variable that sets every progress display and summary of the runner
#: (``auto``, ``rich``, ``log`` or ``none``); ``hydra.sweeper.progress`` wins in a job.
PROGRESS_ENV = "RUNNER_PROGRESS"
#: Where ``mlflow ui`` serves by default.
LOCAL_UI = "http://127.0.0.1:5000"


def progress_mode(config: DictConfig | None = None) -> str:
    """``hydra.sweeper.progress`` of ``config``, else ``RUNNER_PROGRESS``, else ``auto``."""
    value = None
    if config is not None:
        value = OmegaConf.select(config, "hydra.sweeper.progress", default=None)
    if value is None:
        value = os.environ.get(PROGRESS_ENV)
    return str(value or "auto").strip().lower()


def is_quiet(config: DictConfig | None = None) -> bool:
    """Whether summaries are off (``progress=none``)."""
    return progress_mode(config) == "none"


def fmt_duration(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3.04`` -> ``3.0s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{s // 60}m{s % 60:02d}s"


def fmt_number(value: Any) -> str:
    """A metric or param value, short and exact enough to read (6 significant digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def run_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of a run (or the experiment's runs table) for a tracking server;
    the ``mlflow ui`` address (``http://127.0.0.1:5000``) for a local store.

    Always the runs page, ``#/experiments/<id>/runs[/<run>]``: MLflow 3's bare
    ``#/experiments/<id>`` opens the GenAI overview, not the runs.
    """
    base = public_uri(uri).rstrip("/") if _is_server(uri) else LOCAL_UI
    page = f"{base}/#/experiments/{experiment_id}/runs"
    return f"{page}/{run_id}" if run_id else page


def where_to_look(uri: str, experiment_id: str, run_id: str | None = None) -> list[str]:
    """The lines telling where to see a run: its page on a server, or ``mlflow ui`` first."""
    if _is_server(uri):
        return [f"open {run_url(uri, experiment_id, run_id)}"]
    return [
        f"see it: mlflow ui --backend-store-uri {shlex.quote(public_uri(uri))}",
        f"  then open {run_url(uri, experiment_id, run_id)}",
    ]


def compare_command(parent_run_id: str, uri: str) -> str:
    """The ``runner.compare`` command for a sweep, with ``--tracking-uri`` unless the store
    is ``mlflow.db`` in the current directory (the commands' default without
    ``MLFLOW_TRACKING_URI``; MLflow sets that variable in this process, so it proves nothing
    about the user's shell)."""
    cmd = f"python -m runner.compare --sweep {parent_run_id}"
    if uri != f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}":
        cmd += f" --tracking-uri {shlex.quote(public_uri(uri))}"
    return cmd


@dataclass(frozen=True)
class Parent:
    """A sweep's parent run: its store, experiment and id."""

    uri: str
    experiment_id: str
    run_id: str


def sweep_parents(sweep_dir: Path) -> list[Parent]:
    """The parent runs a sweep recorded in its directory (none when it was not tracked)."""
    from runner.tracking.parents import SweepParents

    try:
        found = SweepParents(sweep_dir).all()
    except (OSError, ValueError):  # an unreadable registry: the summary says less
        return []
    return [
        Parent(uri, exp, rid)
        for uri, parents in sorted(found.items())
        for exp, rid in sorted(parents.items())
    ]


@dataclass
class SweepSummary:
    """What a sweep's last lines say.

    Attributes:
        title: The sweep (``study <name>``, or its parent run's name for a grid).
        counts: Trials by state or jobs by status (``{"complete": 11, "failed": 1}``).
        unit: What was counted (``job``, ``trial``).
        wall_s: Wall time of the sweep, in seconds (None: unknown).
        objective: The objective's name (``val_accuracy``), if known.
        best_value: The best objective value; None when no run completed or it is unknown.
        best_label: Which run was best (``trial 3``, ``job #2``).
        best_params: The best run's swept params as ``key=value``.
        note: Said instead of a best (``no trial completed``, a Pareto front...).
        parents: The sweep's parent runs (empty when it was not tracked).
        results_file: A file the sweep wrote its results to.
    """

    title: str
    counts: Mapping[str, int]
    unit: str = "job"
    wall_s: float | None = None
    objective: str | None = None
    best_value: float | None = None
    best_label: str | None = None
    best_params: Sequence[str] = ()
    note: str | None = None
    parents: Sequence[Parent] = field(default_factory=list)
    results_file: Path | None = None


def format_sweep(s: SweepSummary) -> list[str]:
    """The summary block of a sweep, one line each."""
    total = sum(s.counts.values())
    counts = ", ".join(f"{n} {state}" for state, n in s.counts.items() if n)
    took = f" in {fmt_duration(s.wall_s)}" if s.wall_s is not None else ""
    unit = s.unit if total == 1 else f"{s.unit}s"
    lines = [f"{s.title}: done{took}, {total} {unit} ({counts or 'none'})"]
    if s.best_value is not None:
        label = f" ({s.best_label})" if s.best_label else ""
        params = " ".join(s.best_params) or "(no swept params)"
        lines.append(f"  best {s.objective or 'value'} {fmt_number(s.best_value)}{label}: {params}")
    elif s.note:
        lines.append(f"  {s.note}")
    for p in s.parents:
        lines.append(f"  parent run {p.run_id} (experiment {p.experiment_id})")
        lines += [f"  {line}" for line in where_to_look(p.uri, p.experiment_id, p.run_id)]
        lines.append(f"  next: {compare_command(p.run_id, p.uri)}")
    if s.results_file is not None:
        lines.append(f"  results: {s.results_file}")
    return lines


def format_run(
    *,
    run_id: str,
    name: str | None,
    status: str,
    uri: str,
    experiment_id: str,
    wall_s: float | None = None,
    objective: str | None = None,
    value: Any = None,
) -> list[str]:
    """The summary block of a single run: its id, status, objective and where to see it."""
    took = f" in {fmt_duration(wall_s)}" if wall_s is not None else ""
    shown = f" {name}" if name else ""
    result = ""
    if value is not None:
        result = f": {objective or 'value'} {fmt_number(value)}"
    lines = [f"run{shown} {status.lower()}{took}{result}", f"  run id {run_id}"]
    lines += [f"  {line}" for line in where_to_look(uri, experiment_id, run_id)]
    return lines


def emit(lines: Sequence[str], stream: TextIO | None = None) -> None:
    """Print a summary block (redacted: a swept secret is never shown)."""
    out = stream or sys.stderr
    # After Hydra's own log lines, which go to stdout: flush those first.
    sys.stdout.flush()
    out.write("".join(f"{redact_text(line)}\n" for line in lines))
    out.flush()
