"""Best-run tagging: the one implementation behind the sweeper, compare and lifecycle.

The best run(s) of a selection carry the tag ``runner.best=true``; runs of the same
selection that no longer are best lose it, so ``tags.runner.best = 'true'`` in the MLflow UI
always shows the current winners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner import contract
from runner.errors import RunnerError

__all__ = ["BestResult", "mark_best", "rank", "tag_best"]


@dataclass
class BestResult:
    """What :func:`tag_best` changed (run ids), and what it left as it was."""

    best: list[str] = field(default_factory=list)
    tagged: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)


def _direction(runs: Sequence[Any], direction: str | None) -> str:
    if direction:
        if direction not in ("maximize", "minimize"):
            raise RunnerError(
                f"direction {direction!r} is not 'maximize' or 'minimize'; pass one of those."
            )
        return direction
    found = {r.data.params.get("direction") for r in runs} - {None}
    if len(found) == 1:
        return str(found.pop())
    raise RunnerError(
        "the direction cannot be taken from the runs' `direction` param "
        f"(found {sorted(map(str, found)) or 'none'}); pass it explicitly "
        "(--direction maximize|minimize)."
    )


def rank(runs: Sequence[Any], *, metric: str, direction: str | None = None) -> list[Any]:
    """The runs that have a finite ``metric``, best first.

    Raises:
        RunnerError: No run has the metric (the message lists the metrics they have), or the
            direction is unknown.
    """
    scored = [r for r in runs if metric in r.data.metrics and math.isfinite(r.data.metrics[metric])]
    if not scored:
        have = sorted({k for r in runs for k in r.data.metrics})
        raise RunnerError(
            f"no selected run has the metric {metric!r}; they have: "
            f"{', '.join(have) or 'no metrics at all'}."
        )
    reverse = _direction(runs, direction) == "maximize"
    return sorted(scored, key=lambda r: r.data.metrics[metric], reverse=reverse)


def tag_best(
    client: Any,
    runs: Sequence[Any],
    *,
    metric: str,
    direction: str | None = None,
    top: int = 1,
    dry_run: bool = False,
) -> BestResult:
    """Tag the ``top`` best of ``runs`` with ``runner.best=true``; untag the others.

    Args:
        client: An ``MlflowClient``.
        runs: The selection (``mlflow.entities.Run`` objects).
        metric: The metric to rank by.
        direction: ``maximize`` or ``minimize``; by default the runs' ``direction`` param.
        top: How many runs are best.
        dry_run: Compute the changes without making them.
    """
    if top < 1:
        raise RunnerError(f"top is {top}; it must be at least 1.")
    best = rank(runs, metric=metric, direction=direction)[:top]
    return mark_best(client, runs, [r.info.run_id for r in best], dry_run=dry_run)


def mark_best(
    client: Any, runs: Sequence[Any], best: Sequence[str], *, dry_run: bool = False
) -> BestResult:
    """The tagging rule: the runs ``best`` (ids) carry ``runner.best=true``, the other runs
    of ``runs`` lose it. The Optuna sweeper calls it with Optuna's best trials' runs."""
    best_ids = set(best)
    result = BestResult(best=list(best))
    for r in runs:
        has = r.data.tags.get(contract.BEST) == "true"
        if r.info.run_id in best_ids and not has:
            result.tagged.append(r.info.run_id)
            if not dry_run:
                client.set_tag(r.info.run_id, contract.BEST, "true")
        elif r.info.run_id not in best_ids and contract.BEST in r.data.tags:
            result.untagged.append(r.info.run_id)
            if not dry_run:
                client.delete_tag(r.info.run_id, contract.BEST)
    return result
