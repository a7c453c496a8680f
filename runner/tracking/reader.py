"""The read side of a tracking store: one pager for every paged MLflow search.

Every command reads runs and experiments through here, with one page size, whether it holds
an ``MlflowClient`` or (``runner.lifecycle gc``) MLflow's backend store object: both take the
same ``page_token`` / ``max_results`` arguments and return pages with a ``token``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PAGE_SIZE", "paged", "search_experiments", "search_runs"]

#: Items per search request: ``mlflow.search_runs``' own page size (the SQL stores and the
#: tracking server accept up to 50,000).
PAGE_SIZE = 10_000

#: Experiment ids per run search (a tracking server's request stays small).
_EXPERIMENTS_PER_SEARCH = 100


def paged(search: Callable[..., Any], /, **kwargs: Any) -> list[Any]:
    """Every item of a paged search: ``search(page_token=..., **kwargs)`` until no token."""
    items: list[Any] = []
    token: str | None = None
    while True:
        page = search(page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


def search_runs(
    source: Any,
    experiment_ids: Sequence[str],
    filter_string: str = "",
    *,
    view_type: Any = None,
    page_size: int = PAGE_SIZE,
) -> list[Any]:
    """Every run of ``experiment_ids`` matching ``filter_string`` (active runs by default).

    Args:
        source: An ``MlflowClient`` or an MLflow tracking store.
        experiment_ids: The experiments searched (none: no runs).
        filter_string: MLflow's search syntax.
        view_type: A ``mlflow.entities.ViewType``; default ``ACTIVE_ONLY``.
        page_size: Runs per request.
    """
    from mlflow.entities import ViewType

    ids = list(experiment_ids)
    runs: list[Any] = []
    for i in range(0, len(ids), _EXPERIMENTS_PER_SEARCH):
        runs += paged(
            source.search_runs,
            experiment_ids=ids[i : i + _EXPERIMENTS_PER_SEARCH],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY if view_type is None else view_type,
            max_results=page_size,
        )
    return runs


def search_experiments(
    source: Any, *, view_type: Any = None, filter_string: str | None = None
) -> list[Any]:
    """Every experiment (active by default) matching ``filter_string``."""
    from mlflow.entities import ViewType

    return paged(
        source.search_experiments,
        view_type=ViewType.ACTIVE_ONLY if view_type is None else view_type,
        filter_string=filter_string,
        max_results=PAGE_SIZE,
    )
