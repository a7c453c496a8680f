"""``lifecycle gc``: MLflow's own ``gc`` over soft-deleted runs, with a plan and a byte count.

MLflow's ``gc`` removes rows from the tracking database, which a tracking server does not
expose over REST: it needs the backend store URI itself. The plan is computed with the same
store queries ``mlflow gc`` makes (deleted runs and logged models by deletion time, deleted
experiments by last update), then the body of ``mlflow gc`` runs with exactly those ids, so
what it deletes is what the plan showed. Space is measured on the artifact locations before and
after (local directories by walking them, anything else, S3 included, by listing through
MLflow's artifact repository).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from runner.lifecycle.runs import LifecycleError, Plan, fmt_ms, now_ms
from runner.tracking.store import public_uri, resolve_uri

__all__ = ["artifact_bytes", "backend_store_for", "human_bytes", "plan_gc"]

_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def backend_store_for(tracking_uri: str, backend_store_uri: str | None) -> str:
    """The database ``gc`` must open: ``--backend-store-uri``, else the tracking store itself.

    Raises:
        LifecycleError: The tracking URI is a server and no backend store URI was given, or
            the backend store is not a database.
    """
    if backend_store_uri:
        uri = resolve_uri(backend_store_uri, Path.cwd())
    elif urlparse(tracking_uri).scheme in ("http", "https"):
        raise LifecycleError(
            f"gc cannot run through the tracking server {public_uri(tracking_uri)}: MLflow's "
            "gc deletes rows from the server's backend database, which the REST API does not "
            "expose. Pass the database the server was started with, e.g. "
            "--backend-store-uri sqlite:////srv/mlflow/mlflow.db or "
            "--backend-store-uri postgresql+psycopg://user@host/mlflow (keep --tracking-uri "
            "pointing at the server so proxied artifacts are deleted too). Nothing was deleted."
        )
    else:
        uri = tracking_uri
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in _DB_SCHEMES:
        raise LifecycleError(
            f"--backend-store-uri {public_uri(uri)} is not a database URI; gc needs the "
            "tracking database (sqlite:///..., postgresql://..., mysql://...)."
        )
    if scheme == "sqlite" and not Path(uri[len("sqlite:///") :]).is_file():
        raise LifecycleError(
            f"the backend store {uri} does not exist; pass the SQLite file the runs are "
            "in (--backend-store-uri or --tracking-uri)."
        )
    return uri


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme:
        return Path(uri)
    return None


def artifact_bytes(uri: str, *, tracking_uri: str | None = None) -> int | None:
    """Bytes stored under an artifact location; None when it cannot be listed."""
    local = _local_path(uri)
    if local is not None:
        if not local.exists():
            return 0
        if local.is_file():
            return local.stat().st_size
        return sum((Path(d) / f).stat().st_size for d, _, files in os.walk(local) for f in files)
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        repo = get_artifact_repository(uri, tracking_uri=tracking_uri)

        def walk(path: str | None) -> int:
            total = 0
            for info in repo.list_artifacts(path):
                total += walk(info.path) if info.is_dir else int(info.file_size or 0)
            return total

        return walk(None)
    except Exception:  # any backend error: the size is unknown, gc itself may still work
        return None


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _sizes(uris: list[str], tracking_uri: str) -> tuple[int, int]:
    """Total bytes and how many locations could not be measured."""
    total, unknown = 0, 0
    for uri in uris:
        n = artifact_bytes(uri, tracking_uri=tracking_uri)
        if n is None:
            unknown += 1
        else:
            total += n
    return total, unknown


class _Lines(io.TextIOBase):
    """A stdout that keeps every non-empty line written to it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        *done, self._buf = self._buf.split("\n")
        self.lines += [line.strip() for line in done if line.strip()]
        return len(text)


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's global tracking URI for a while, then restore it and the environment.

    (MLflow's own ``_use_tracking_uri`` unsets ``MLFLOW_TRACKING_URI`` on the way out.)
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]  # None: unset again
        if saved_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _deleted_runs(store: Any, experiment_id: str) -> list[Any]:
    from mlflow.entities import ViewType

    from runner.tracking.reader import search_runs

    return search_runs(store, [experiment_id], view_type=ViewType.DELETED_ONLY)


def plan_gc(
    *, tracking_uri: str, backend_store_uri: str | None, older_than_ms: int, older_than: str
) -> Plan:
    """Plan MLflow's gc of what was soft-deleted more than ``older_than_ms`` ago."""
    from mlflow.entities import ViewType
    from mlflow.tracking import _get_store

    backend = backend_store_for(tracking_uri, backend_store_uri)
    # The store class `mlflow gc` itself builds, so the plan uses its exact selection rules.
    store: Any = _get_store(backend, None)
    cutoff = now_ms() - older_than_ms
    run_ids = sorted(store._get_deleted_runs(older_than=older_than_ms))
    model_ids = sorted(store._get_deleted_logged_models(older_than=older_than_ms))
    from runner.tracking.reader import search_experiments

    exps = search_experiments(
        store, view_type=ViewType.DELETED_ONLY, filter_string=f"last_update_time < {cutoff}"
    )
    # gc hard-deletes a deleted experiment with its deleted runs, but refuses (midway) when
    # one of those runs was deleted less than --older-than ago (a run deleted on its own
    # after its experiment was restored and deleted again): such experiments wait.
    old_runs = set(run_ids)
    waiting: list[str] = []
    exp_runs: list[Any] = []
    for e in list(exps):
        inside = _deleted_runs(store, e.experiment_id)
        if any(r.info.run_id not in old_runs for r in inside):
            exps.remove(e)
            waiting.append(
                f"experiment {e.experiment_id} ({e.name}) waits: some of its runs were "
                f"deleted less than {older_than} ago"
            )
        else:
            exp_runs.extend(inside)
    exp_ids = [e.experiment_id for e in exps]
    runs = {rid: store.get_run(rid) for rid in run_ids}
    runs.update({r.info.run_id: r for r in exp_runs})
    models = {mid: store.get_logged_model(mid, allow_deleted=True) for mid in model_ids}
    locations = [r.info.artifact_uri for r in runs.values()]
    locations += [m.artifact_location for m in models.values()]
    before, unknown = _sizes(locations, tracking_uri)

    plan = Plan(
        "gc",
        f"permanently delete (mlflow gc) what was soft-deleted more than {older_than} ago "
        f"(before {fmt_ms(cutoff)}) from {public_uri(backend)}, with its artifacts",
    )
    plan.targets = [
        f"run {rid} ({runs[rid].info.run_name}), artifacts {runs[rid].info.artifact_uri}"
        for rid in sorted(runs)
    ]
    plan.targets += [f"logged model {mid} ({models[mid].name})" for mid in sorted(models)]
    plan.targets += [f"experiment {e.experiment_id} ({e.name})" for e in exps]
    size_note = f"artifacts now: {human_bytes(before)}"
    if unknown:
        size_note += f" ({unknown} locations could not be listed)"
    plan.notes.append(size_note)
    plan.notes += waiting

    def execute(report: Callable[[str], None]) -> None:
        with warnings.catch_warnings():
            # Importing mlflow.cli imports mlflow.pyfunc, whose module-level schema inference
            # warns about `Any` type hints in MLflow's own response types; nothing of ours.
            warnings.filterwarnings(
                "ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning
            )
            from mlflow.cli import _gc_tracking_resources

        out = _Lines()
        # The body of `mlflow gc` (mlflow/cli/__init__.py, pinned mlflow 3.17), called with
        # the planned ids: the command itself cannot be told to skip deleted experiments,
        # and it re-checks every id (deleted, old enough) before deleting it. Artifacts
        # proxied by a server (mlflow-artifacts:/) resolve through the tracking URI.
        try:
            with _global_tracking_uri(tracking_uri), contextlib.redirect_stdout(out):
                _gc_tracking_resources(
                    backend_store=store,
                    run_ids=run_ids,
                    experiment_ids=exp_ids,
                    logged_model_ids=model_ids,
                    older_than=f"{older_than_ms / 1000:.3f}s",
                    time_delta=older_than_ms,
                    skip_experiments=not exp_ids,
                    skip_logged_models=not model_ids,
                )
        finally:
            # What gc did is reported even when it stopped on an error midway.
            for line in out.lines:
                report(f"mlflow gc: {line}")
        after, _ = _sizes(locations, tracking_uri)
        report(
            f"reclaimed {human_bytes(max(before - after, 0))} of artifacts "
            f"({before - after} bytes; {human_bytes(after)} left at those locations)"
        )

    plan.execute = execute
    return plan
