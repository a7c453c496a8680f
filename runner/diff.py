"""``python -m runner.diff <run_a> <run_b>``: what differs between two runs.

Sections: the runs themselves, group choices, params, overrides, provenance (commit,
Python, packages, dataset digest) and metrics (last values). Only differences by default,
``--all`` for everything; a plain-text table, or ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.cli import add_tracking_uri, fail
from runner.errors import RunnerError

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = ["SECTIONS", "diff_runs", "main"]

SECTIONS = ("run", "choices", "params", "overrides", "provenance", "metrics")

_PROVENANCE_TAGS = (
    contract.GIT_COMMIT,
    contract.GIT_DIRTY,
    contract.PYTHON,
    contract.DATASET_DIGEST,
    contract.TASK,
)
_RUN_TAGS = (contract.KIND, contract.REPLAY_OF, contract.PARENT_RUN_ID, contract.JOB_NUM)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner.diff",
        description=(
            "Show what differs between two runs: group choices, params, overrides, "
            "provenance (commit, packages, dataset digest) and metrics, side by side."
        ),
        epilog="exit status: 0 ok (whether or not the runs differ; a broken chain of "
        "parent runs above either run is a warning), 2 bad input.",
    )
    p.add_argument("run_a", help="first run id (e.g. the source run)")
    p.add_argument("run_b", help="second run id (e.g. its replay)")
    p.add_argument("--all", action="store_true", help="show equal entries too")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_tracking_uri(p, "the store holding both runs")
    return p


def _overrides(run: Run) -> dict[str, str]:
    # One row per overridden key (`model.max_depth=3` -> model.max_depth: 3).
    try:
        items = json.loads(run.data.tags.get(contract.OVERRIDES, "[]"))
    except json.JSONDecodeError:
        items = []
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else ""
    return out


def _split_params(params: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    from runner.replay.rebuild import choices_from_params

    choices = choices_from_params(params)
    return choices, {k: v for k, v in params.items() if k not in choices}


def _info(run: Run) -> dict[str, str]:
    info = {
        "name": run.info.run_name or "",
        "experiment_id": str(run.info.experiment_id),
        "status": run.info.status,
    }
    info.update({k: run.data.tags[k] for k in _RUN_TAGS if k in run.data.tags})
    return info


def _provenance(run: Run) -> dict[str, str]:
    tags = run.data.tags
    out = {k: tags[k] for k in _PROVENANCE_TAGS if k in tags}
    out.update({k: v for k, v in tags.items() if k.startswith(contract.PKG_PREFIX)})
    return out


def _rows(a: Mapping[str, Any], b: Mapping[str, Any], *, show_all: bool) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va == vb and not show_all:
            continue
        rows.append({"key": key, "a": va, "b": vb, "equal": va == vb})
    return rows


def _metric_rows(a: Run, b: Run, *, show_all: bool) -> list[dict[str, Any]]:
    rows = _rows(a.data.metrics, b.data.metrics, show_all=show_all)
    for row in rows:
        va, vb = row["a"], row["b"]
        row["difference"] = vb - va if va is not None and vb is not None else None
    return rows


def diff_runs(a: Run, b: Run, *, show_all: bool = False) -> dict[str, Any]:
    """The differences between runs ``a`` and ``b``, section by section.

    Returns:
        ``{"a": id, "b": id, "sections": {name: [{"key", "a", "b", "equal"}, ...]}}``;
        metric rows also carry ``difference`` (b - a). Missing entries are None.
    """
    choices_a, params_a = _split_params(a.data.params)
    choices_b, params_b = _split_params(b.data.params)
    sections = {
        "run": _rows(_info(a), _info(b), show_all=show_all),
        "choices": _rows(choices_a, choices_b, show_all=show_all),
        "params": _rows(params_a, params_b, show_all=show_all),
        "overrides": _rows(_overrides(a), _overrides(b), show_all=show_all),
        "provenance": _rows(_provenance(a), _provenance(b), show_all=show_all),
        "metrics": _metric_rows(a, b, show_all=show_all),
    }
    return {"a": a.info.run_id, "b": b.info.run_id, "sections": sections}


#: Control characters (C0, DEL, C1): a tag or param is a stranger's text, and one holding a
#: terminal escape (`\x1b[2J`) would act on the reader's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return repr(value)
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def render(result: dict[str, Any], *, show_all: bool = False) -> str:
    """The diff as plain-text tables, one per section."""
    from runner.replay.checks import format_table

    a, b = result["a"], result["b"]
    out = [f"A = {a}", f"B = {b}"]
    for name in SECTIONS:
        rows = result["sections"][name]
        out.append("")
        if not rows:
            out.append(f"{name}: no differences")
            continue
        out.append(f"{name}:")
        headers = [name[:-1] if name.endswith("s") else "key", "A", "B"]
        body = [[_cell(r["key"]), _cell(r["a"]), _cell(r["b"])] for r in rows]
        if name == "metrics":
            headers.append("B - A")
            for row, r in zip(body, rows, strict=True):
                d = r["difference"]
                row.append("-" if d is None else ("0" if d == 0 else f"{d:.3g}"))
        if show_all:
            headers.append("")
            for row, r in zip(body, rows, strict=True):
                row.append("" if r["equal"] else "*")
        out.append(format_table(headers, body))
    return "\n".join(out)


def _warn_parents(client: Any, *runs: Run) -> None:
    """Warn of a cycle, a missing or a garbled parent above either run (the diff goes on)."""
    from runner.tracking.reader import Lineage, ReadError, get_run

    try:
        lineage = Lineage(runs, lookup=lambda rid: get_run(client, rid))
    except ReadError as e:
        print(f"warning: the parent runs were not checked: {e}", file=sys.stderr)
        return
    for label, run in zip("AB", runs, strict=True):
        problem = lineage.problem(run.info.run_id)
        if problem is not None:
            print(f"warning: run {label} ({run.info.run_id}): {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m runner.diff``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        from runner.replay.logged import get_run
        from runner.tracking.store import command_uri, connect

        client = connect(command_uri(args.tracking_uri))
        a, b = get_run(client, args.run_a), get_run(client, args.run_b)
    except RunnerError as e:
        return fail(e)
    _warn_parents(client, a, b)
    result = diff_runs(a, b, show_all=args.all)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        print(render(result, show_all=args.all))
    return 0


if __name__ == "__main__":
    from runner.cli import run_main

    run_main(main)
