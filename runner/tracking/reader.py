"""The read side of a tracking store: one pager for every paged MLflow search.

Every command reads runs and experiments through here, with one page size, whether it holds
an ``MlflowClient`` or (``runner.lifecycle gc``) MLflow's backend store object: both take the
same ``page_token`` / ``max_results`` arguments and return pages with a ``token``.

:class:`Lineage` is the one walk up ``mlflow.parentRunId`` chains: anyone who can log a run
can write that tag, so a chain may loop, end at a run that is not there, or hold garbage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runner import contract
from runner.errors import RunnerError, TrackingError

__all__ = [
    "MAX_FETCHED_PARENTS",
    "PAGE_SIZE",
    "Lineage",
    "ParentProblem",
    "ReadError",
    "find_experiment",
    "get_run",
    "is_run_id",
    "is_store_error",
    "mlflow_message",
    "paged",
    "require_run",
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


def require_run(client: Any, run_id: str, *, error: type[RunnerError], message: str) -> Any:
    """The run ``run_id``, or ``error(message)`` when the store cannot give it.

    A store that refuses the id (:class:`ReadError`: a malformed id) counts as no such run,
    so the user gets the command's own message, which names the id and the fix.

    Args:
        client: The MLflow client.
        run_id: The run to read.
        error: The command's error class.
        message: What was wrong and the fix, naming ``run_id``.

    Raises:
        RunnerError: ``error(message)``, when the store has no such run.
    """
    try:
        run = get_run(client, run_id)
    except ReadError:
        run = None
    if run is None:
        raise error(message)
    return run


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


# -- parent chains ----------------------------------------------------------------------------

#: MLflow's own rule for a run id (``mlflow/utils/validation.py``, ``_RUN_ID_REGEX``).
_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")

#: Parent runs a :class:`Lineage` fetches at most (one request each): a hostile chain of
#: thousands of runs costs no more than this.
MAX_FETCHED_PARENTS = 100


def is_run_id(value: str) -> bool:
    """Whether ``value`` is shaped like a run id, by MLflow's own rule."""
    return _RUN_ID.fullmatch(value) is not None


def _shown(value: str, limit: int = 60) -> str:
    # repr(): a tag is hostile text; control characters and escapes are shown, not sent.
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


@dataclass(frozen=True)
class ParentProblem:
    """Why the parent chain of run ``run_id`` cannot be followed past ``run_id``.

    ``kind`` is ``garbled`` (the tag is not a run id), ``missing`` (no such run in the
    store), ``cycle`` (``run_id`` is its own ancestor; ``cycle`` lists the loop from it back
    to it) or ``deep`` (more than :data:`MAX_FETCHED_PARENTS` parents to fetch).
    """

    run_id: str
    kind: str
    parent: str
    cycle: tuple[str, ...] = ()

    @property
    def what(self) -> str:
        """What is wrong, with the value."""
        tag = contract.PARENT_RUN_ID
        if self.kind == "garbled":
            return f"run {self.run_id}'s {tag} tag is {_shown(self.parent)}, not a run id"
        if self.kind == "missing":
            return (
                f"run {self.run_id}'s parent run {self.parent} ({tag}) is not in this "
                "tracking store (deleted, or never there)"
            )
        if self.kind == "cycle" and len(self.cycle) == 2:
            return f"run {self.run_id} names itself as its parent ({tag} = {self.run_id})"
        if self.kind == "cycle":
            return f"run {self.run_id} is in a cycle of parent runs: {' -> '.join(self.cycle)}"
        return (
            f"run {self.run_id}'s chain of parent runs is longer than {MAX_FETCHED_PARENTS} "
            f"runs; it was followed no further (at parent {self.parent})"
        )

    @property
    def fix(self) -> str:
        """How to fix the tag."""
        tag = contract.PARENT_RUN_ID
        rid = self.run_id if self.kind != "deep" else "<run id>"
        who = "on one run of the cycle" if self.kind == "cycle" and len(self.cycle) > 2 else ""
        return (
            f"fix the tag{' ' + who if who else ''}: MlflowClient().set_tag({rid!r}, {tag!r}, "
            f"'<parent run id>'), or .delete_tag({rid!r}, {tag!r}) for a top-level run"
        )

    def __str__(self) -> str:
        return f"{self.what}; {self.fix}"


class Lineage:
    """The parent links among ``runs``, followed safely: cycles, missing and garbled parents.

    Every run's chain is walked once (iteratively, memoised): a chain stops at a run with
    no parent tag, at a problem (:class:`ParentProblem`), or at a parent outside ``runs``.
    Such a parent is fetched with ``lookup`` when one is given (a missing one is a problem);
    without ``lookup`` it is a ``missing`` problem when ``complete`` (``runs`` is the whole
    store), else the chain just ends there.

    Args:
        runs: MLflow runs (``info.run_id``, ``data.tags``).
        lookup: ``run id -> Run | None`` for parents outside ``runs`` (e.g. a ``get_run``).
        complete: Whether ``runs`` holds every run a parent could be.
    """

    def __init__(
        self,
        runs: Iterable[Any],
        *,
        lookup: Callable[[str], Any | None] | None = None,
        complete: bool = False,
    ) -> None:
        self._runs: dict[str, Any] = {r.info.run_id: r for r in runs}
        self._lookup = lookup
        self._complete = complete
        self._fetched = 0
        #: run id -> (its sound ancestors, parent first; the problem that ends the chain)
        self._up: dict[str, tuple[tuple[str, ...], ParentProblem | None]] = {}
        for rid in list(self._runs):
            self._walk(rid)

    def _raw(self, run_id: str) -> str | None:
        tags = self._runs[run_id].data.tags
        value = tags.get(contract.PARENT_RUN_ID)
        return None if value is None else str(value)

    def _known(self, run_id: str) -> bool | None:
        """Whether ``run_id`` is a run (True), not one (False), or not looked for (None)."""
        if run_id in self._runs:
            return True
        if self._lookup is None:
            return False if self._complete else None
        if self._fetched >= MAX_FETCHED_PARENTS:
            raise _TooDeep
        self._fetched += 1
        run = self._lookup(run_id)
        if run is None:
            return False
        self._runs[run_id] = run
        return True

    def _walk(self, start: str) -> None:
        path: list[str] = []
        node = start
        while node not in self._up:
            raw = self._raw(node)
            if raw is None:
                self._up[node] = ((), None)
                break
            if not is_run_id(raw):
                self._up[node] = ((), ParentProblem(node, "garbled", raw))
                break
            if raw == node or raw in path:
                loop = [*path[path.index(raw) :], node] if raw != node else [node]
                for i, member in enumerate(loop):
                    order = (*loop[i:], *loop[:i], member)
                    parent = order[1]
                    self._up[member] = ((), ParentProblem(member, "cycle", parent, order))
                del path[len(path) - len(loop) + 1 :]
                break
            try:
                known = self._known(raw)
            except _TooDeep:
                self._up[node] = ((), ParentProblem(node, "deep", raw))
                break
            if known is None:
                self._up[node] = ((raw,), None)
                break
            if not known:
                self._up[node] = ((), ParentProblem(node, "missing", raw))
                break
            path.append(node)
            node = raw
        # Each run left on the path has the next one (or the run the walk stopped at) as
        # its sound parent.
        for child in reversed(path):
            if child in self._up:
                continue
            up = self._raw(child)
            assert up is not None
            above, problem = self._up[up]
            self._up[child] = ((up, *above), problem)

    def ancestors(self, run_id: str) -> tuple[str, ...]:
        """The run's ancestors, parent first, as far as the chain is sound."""
        return self._up[run_id][0]

    def problem(self, run_id: str) -> ParentProblem | None:
        """The problem that ends the run's chain (its own, or an ancestor's), if any."""
        return self._up[run_id][1]

    def parent(self, run_id: str) -> str | None:
        """The run's parent when its own tag names a run (not garbled, missing, or a loop)."""
        above = self.ancestors(run_id)
        return above[0] if above else None

    def on_cycle(self, run_id: str) -> bool:
        """Whether the run is its own ancestor."""
        problem = self.problem(run_id)
        return problem is not None and problem.kind == "cycle" and problem.run_id == run_id


class _TooDeep(Exception):
    pass
