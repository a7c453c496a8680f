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

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from runner.lifecycle.runs import LifecycleError, Plan, fmt_ms, now_ms
from runner.tracking.admin import artifact_bytes, run_gc, select_gc
from runner.tracking.store import public_uri, resolve_uri

__all__ = ["backend_store_for", "human_bytes", "plan_gc"]

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


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _sizes(uris: list[str], tracking_uri: str, *, what: str) -> tuple[int, int]:
    """Total bytes and how many locations could not be measured."""
    from runner.cli import CommandProgress

    total, unknown = 0, 0
    with CommandProgress(what, len(uris)) as progress:
        for uri in uris:
            n = artifact_bytes(uri, tracking_uri=tracking_uri)
            if n is None:
                unknown += 1
            else:
                total += n
            progress.advance()
    return total, unknown


def plan_gc(
    *, tracking_uri: str, backend_store_uri: str | None, older_than_ms: int, older_than: str
) -> Plan:
    """Plan MLflow's gc of what was soft-deleted more than ``older_than_ms`` ago."""
    backend = backend_store_for(tracking_uri, backend_store_uri)
    cutoff = now_ms() - older_than_ms
    from runner.cli import CommandProgress

    # Thousands of deleted runs: one read each, then their artifacts measured.
    with CommandProgress("gc: reading deleted runs") as progress:
        sel = select_gc(
            backend,
            older_than_ms=older_than_ms,
            cutoff_ms=cutoff,
            older_than=older_than,
            progress=progress.update,
        )
    runs, models = sel.runs, sel.models
    locations = [r.info.artifact_uri for r in runs.values()]
    locations += [m.artifact_location for m in models.values()]
    before, unknown = _sizes(locations, tracking_uri, what="gc: measuring artifacts")

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
    plan.targets += [f"experiment {e.experiment_id} ({e.name})" for e in sel.experiments]
    size_note = f"artifacts now: {human_bytes(before)}"
    if unknown:
        size_note += f" ({unknown} locations could not be listed)"
    plan.notes.append(size_note)
    plan.notes += sel.waiting

    def execute(report: Callable[[str], None]) -> None:
        run_gc(sel, tracking_uri=tracking_uri, older_than_ms=older_than_ms, report=report)
        after, _ = _sizes(locations, tracking_uri, what="gc: measuring what is left")
        report(
            f"reclaimed {human_bytes(max(before - after, 0))} of artifacts "
            f"({before - after} bytes; {human_bytes(after)} left at those locations)"
        )

    plan.execute = execute
    return plan
