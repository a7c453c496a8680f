"""The read side of a tracking store: one pager for every paged MLflow search.

Every command reads runs and experiments through here, with one page size, whether it holds
an ``MlflowClient`` or (``runner.lifecycle gc``) MLflow's backend store object: both take the
same ``page_token`` / ``max_results`` arguments and return pages with a ``token``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from runner.errors import TrackingError

__all__ = [
    "PAGE_SIZE",
    "ReadError",
    "find_experiment",
    "get_run",
    "is_store_error",
    "mlflow_message",
    "paged",
    "search_experiments",
    "search_runs",
]

#: Items per search request: ``mlflow.search_runs``' own page size (the SQL stores and the
#: tracking server accept up to 50,000).
PAGE_SIZE = 10_000

#: Experiment ids per run search (a tracking server's request stays small).
_EXPERIMENTS_PER_SEARCH = 100


class ReadError(TrackingError):
    """MLflow refused a read (a bad filter, a malformed id); the message is MLflow's."""


def mlflow_message(error: BaseException) -> str:
    """The message of an ``MlflowException`` (or any error), without its code prefix."""
    return str(getattr(error, "message", None) or error).strip()


def _view(view: str) -> Any:
    from mlflow.entities import ViewType

    views = {"active": ViewType.ACTIVE_ONLY, "deleted": ViewType.DELETED_ONLY, "all": ViewType.ALL}
    return views[view]


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
    view: str = "active",
    page_size: int = PAGE_SIZE,
) -> list[Any]:
    """Every run of ``experiment_ids`` matching ``filter_string``.

    Args:
        source: An ``MlflowClient`` or an MLflow tracking store.
        experiment_ids: The experiments searched (none: no runs).
        filter_string: MLflow's search syntax.
        view: ``active`` (default), ``deleted`` or ``all`` runs.
        page_size: Runs per request.

    Raises:
        ReadError: MLflow refused the search (e.g. a bad filter).
    """
    from mlflow.exceptions import MlflowException

    ids = list(experiment_ids)
    runs: list[Any] = []
    try:
        for i in range(0, len(ids), _EXPERIMENTS_PER_SEARCH):
            runs += paged(
                source.search_runs,
                experiment_ids=ids[i : i + _EXPERIMENTS_PER_SEARCH],
                filter_string=filter_string,
                run_view_type=_view(view),
                max_results=page_size,
            )
    except MlflowException as e:
        raise ReadError(mlflow_message(e)) from e
    return runs


def search_experiments(
    source: Any, *, view: str = "active", filter_string: str | None = None
) -> list[Any]:
    """Every experiment (``active`` by default, ``deleted``, ``all``) matching the filter."""
    return paged(
        source.search_experiments,
        view_type=_view(view),
        filter_string=filter_string,
        max_results=PAGE_SIZE,
    )


def get_run(client: Any, run_id: str) -> Any | None:
    """The run ``run_id``, or None when the store has no such run.

    Raises:
        ReadError: MLflow refused the id for another reason.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or (
            "not found" in str(e).lower()
        ):
            return None
        raise ReadError(mlflow_message(e)) from e


def is_store_error(error: BaseException) -> bool:
    """Whether ``error`` is the tracking store refusing a request (an ``MlflowException``)."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException)


def find_experiment(client: Any, name: str) -> Any | None:
    """The experiment called ``name`` (or with id ``name``), deleted ones included; or None."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None and name.isdigit():
        try:
            exp = client.get_experiment(name)
        except MlflowException:
            exp = None
    return exp
