"""Copying runs from one tracking store to another: ``python -m runner.sync``'s work.

With ``tracking.on_unavailable=buffer``, a job whose server does not answer logs to
``.runner_buffer/mlflow.db`` in its launch directory and tags its runs ``runner.buffered_for``
with the server's URI. :func:`sync` copies those runs onto the server (or another URI):
params, metrics with their steps and timestamps, tags, artifacts, logged models, start and
end times, status, and parent/child links.

Idempotent: each copy is tagged ``runner.synced_from`` = the buffered run's id, and the
buffered run ``runner.synced_to`` = the copy's id once the copy is complete; a second sync
skips it, and a copy left half-done by an interrupted sync is deleted and made again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.errors import RunnerError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from runner.tracking.reader import Lineage

__all__ = ["SyncResult", "sync"]

_NOT_COPIED = frozenset({contract.PARENT_RUN_ID, contract.BUFFERED_FOR, contract.SYNCED_TO})


@dataclass
class SyncResult:
    """What one sync did."""

    synced: list[tuple[str, str]] = field(default_factory=list)  # (buffered id, new id)
    already: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    #: (buffered id, why): left in the buffer, e.g. a run in a cycle of parent runs.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: (buffered id, why): copied as a top-level run, its parent tag missing or garbled.
    unlinked: list[tuple[str, str]] = field(default_factory=list)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _all_runs(client: MlflowClient) -> tuple[list[Run], Lineage]:
    from runner.tracking.reader import Lineage, search_experiments, search_runs

    exps = [e.experiment_id for e in search_experiments(client, view="all")]
    runs: list[Run] = search_runs(client, exps)
    lineage = Lineage(runs, complete=True)
    # Parents first, so that each child's parent already has its copy.
    ordered = sorted(
        runs, key=lambda r: (len(lineage.ancestors(r.info.run_id)), r.info.start_time or 0)
    )
    return ordered, lineage


def _find_copy(dst: MlflowClient, experiment_id: str, run_id: str) -> str | None:
    found = dst.search_runs(
        [experiment_id], filter_string=f"tags.`{contract.SYNCED_FROM}` = '{run_id}'", max_results=5
    )
    return found[0].info.run_id if found else None


def _copy_models(src: MlflowClient, dst: MlflowClient, run: Run, new_id: str, exp: str) -> None:
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelStatus

    models = src.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    for m in models:
        with tempfile.TemporaryDirectory(prefix="runner-sync-model-") as tmp:
            local = download_artifacts(
                artifact_uri=m.artifact_location, dst_path=tmp, tracking_uri=src.tracking_uri
            )
            copy = dst.create_logged_model(
                experiment_id=exp,
                name=m.name,
                source_run_id=new_id,
                tags=dict(m.tags or {}),
                params=dict(m.params or {}),
                model_type=m.model_type,
            )
            dst.log_model_artifacts(copy.model_id, local)
            dst.finalize_logged_model(copy.model_id, LoggedModelStatus.READY)


def _replay(src: MlflowClient, dst: MlflowClient, run: Run, *, parent: str | None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    from runner.tracking.store import Store

    name = src.get_experiment(run.info.experiment_id).name
    exp = Store(dst.tracking_uri).experiment_id(name)
    stale = _find_copy(dst, exp, run.info.run_id)
    if stale is not None:  # an interrupted sync's half-made copy
        dst.delete_run(stale)
    tags = {k: v for k, v in run.data.tags.items() if k not in _NOT_COPIED}
    tags[contract.SYNCED_FROM] = run.info.run_id
    if parent:
        tags[contract.PARENT_RUN_ID] = parent
    new = dst.create_run(
        exp, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
    ).info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for chunk in _chunks(params, 100):
        dst.log_batch(new, params=chunk)
    history = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in src.get_metric_history(run.info.run_id, key)
    ]
    for mchunk in _chunks(history, 1000):
        dst.log_batch(new, metrics=mchunk)
    with tempfile.TemporaryDirectory(prefix="runner-sync-") as tmp:
        local = src.download_artifacts(run.info.run_id, "", tmp)
        if any(Path(local).iterdir()):
            dst.log_artifacts(new, local)
    _copy_models(src, dst, run, new, exp)
    dst.set_terminated(new, status=run.info.status, end_time=run.info.end_time)
    # Done: the buffered run now points at its complete copy.
    src.log_batch(run.info.run_id, tags=[RunTag(contract.SYNCED_TO, new)])
    return str(new)


def sync(
    buffer_uri: str,
    to: str | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SyncResult:
    """Replay every finished buffered run onto its server (or ``to``).

    ``progress(done, total)`` is called after each buffered run is handled (copied, or
    found synced, running or skipped).

    A run whose ``mlflow.parentRunId`` is garbled or names a run the buffer lacks is copied
    as a top-level run (``SyncResult.unlinked``); a run in a cycle of parent runs, and its
    descendants, stay in the buffer (``SyncResult.skipped``) until the tag is fixed.

    Raises:
        TrackingError: A target that does not answer.
        RunnerError: A buffered run names no target, and none was given.
    """
    from runner.tracking.store import check_reachable, ensure_store

    ensure_store(buffer_uri)
    from mlflow.tracking import MlflowClient

    src = MlflowClient(buffer_uri)
    result = SyncResult()
    copies: dict[str, str] = {}  # buffered run id -> copy id
    clients: dict[str, MlflowClient] = {}
    runs, lineage = _all_runs(src)
    skipped: set[str] = set()
    for done, run in enumerate(runs):
        if progress is not None:
            progress(done, len(runs))
        rid = run.info.run_id
        if contract.SYNCED_TO in run.data.tags:
            copies[rid] = run.data.tags[contract.SYNCED_TO]
            result.already.append(rid)
            continue
        if run.info.status == "RUNNING":
            result.running.append(rid)
            continue
        problem = lineage.problem(rid)
        parent = lineage.parent(rid)
        if lineage.on_cycle(rid) or (parent is not None and parent in skipped):
            # No copy can say whose child it is; the run waits in the buffer for a fix.
            why = str(problem) if parent is None else f"its parent run {parent} was skipped"
            skipped.add(rid)
            result.skipped.append((rid, why))
            continue
        target = to or run.data.tags.get(contract.BUFFERED_FOR)
        if not target or "***" in target:
            raise RunnerError(
                f"buffered run {rid} does not say which server it was meant for "
                f"({contract.BUFFERED_FOR}={target!r}); pass --to URI (credentials in the "
                "environment)."
            )
        if target not in clients:
            check_reachable(target)
            ensure_store(target)
            clients[target] = MlflowClient(target)
        if parent is not None and parent not in copies:
            # A parent still RUNNING (its sweep is not over): sync the child later.
            result.running.append(rid)
            continue
        new = _replay(src, clients[target], run, parent=copies.get(parent) if parent else None)
        copies[rid] = new
        result.synced.append((rid, new))
        if parent is None and problem is not None:
            result.unlinked.append((rid, f"copied as {new}, with no parent: {problem}"))
    if progress is not None:
        progress(len(runs), len(runs))
    return result
