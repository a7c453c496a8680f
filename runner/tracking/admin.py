"""MLflow's private calls, in one place: what ``mlflow gc`` would delete, and its body.

``python -m runner.lifecycle gc`` plans with exactly the store queries ``mlflow gc`` makes
(deleted runs and logged models by deletion time, deleted experiments by last update), then
runs the body of ``mlflow gc`` with exactly those ids. These are MLflow internals (pinned
mlflow 3.17): when MLflow changes them, this module is the one to change.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from runner.tracking.reader import search_experiments, search_runs

__all__ = ["GcSelection", "artifact_bytes", "run_gc", "select_gc"]


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


class _Lines(io.TextIOBase):
    """A stdout that hands each non-empty line written to it to ``on_line`` as it comes,
    with the real stdout back in place meanwhile (``on_line`` may print)."""

    def __init__(self, on_line: Callable[[str], None], real: Any) -> None:
        self.on_line = on_line
        self.real = real
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        *done, self._buf = self._buf.split("\n")
        for line in done:
            self._send(line)
        return len(text)

    def _send(self, line: str) -> None:
        if line.strip():
            with contextlib.redirect_stdout(self.real):
                self.on_line(line.strip())

    def close_lines(self) -> None:
        """Send what is left of an unfinished last line."""
        rest, self._buf = self._buf, ""
        self._send(rest)


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


@dataclass
class GcSelection:
    """What ``mlflow gc`` would delete: ids, their entities, and experiments that wait."""

    store: Any
    run_ids: list[str]
    model_ids: list[str]
    experiments: list[Any]
    runs: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)


def select_gc(
    backend: str,
    *,
    older_than_ms: int,
    cutoff_ms: int,
    older_than: str,
    progress: Callable[[int, int], None] | None = None,
) -> GcSelection:
    """The runs, logged models and experiments soft-deleted more than ``older_than_ms`` ago.

    Uses the store class ``mlflow gc`` itself builds, so the selection follows its rules.
    ``progress(done, total)`` follows the one read per run (thousands take a while).
    """
    from mlflow.tracking import _get_store

    store: Any = _get_store(backend, None)
    run_ids = sorted(store._get_deleted_runs(older_than=older_than_ms))
    model_ids = sorted(store._get_deleted_logged_models(older_than=older_than_ms))
    exps = search_experiments(
        store, view="deleted", filter_string=f"last_update_time < {cutoff_ms}"
    )
    # gc hard-deletes a deleted experiment with its deleted runs, but refuses (midway) when
    # one of those runs was deleted less than --older-than ago (a run deleted on its own
    # after its experiment was restored and deleted again): such experiments wait.
    old_runs = set(run_ids)
    selection = GcSelection(store, run_ids, model_ids, [])
    exp_runs: list[Any] = []
    for e in exps:
        inside = search_runs(store, [e.experiment_id], view="deleted")
        if any(r.info.run_id not in old_runs for r in inside):
            selection.waiting.append(
                f"experiment {e.experiment_id} ({e.name}) waits: some of its runs were "
                f"deleted less than {older_than} ago"
            )
        else:
            selection.experiments.append(e)
            exp_runs.extend(inside)
    for i, rid in enumerate(run_ids, start=1):
        selection.runs[rid] = store.get_run(rid)
        if progress is not None:
            progress(i, len(run_ids))
    selection.runs.update({r.info.run_id: r for r in exp_runs})
    selection.models = {mid: store.get_logged_model(mid, allow_deleted=True) for mid in model_ids}
    return selection


def run_gc(
    selection: GcSelection,
    *,
    tracking_uri: str,
    older_than_ms: int,
    report: Callable[[str], None],
) -> None:
    """Run the body of ``mlflow gc`` on exactly the selected ids; report its output lines."""
    with warnings.catch_warnings():
        # Importing mlflow.cli imports mlflow.pyfunc, whose module-level schema inference
        # warns about `Any` type hints in MLflow's own response types; nothing of ours.
        warnings.filterwarnings(
            "ignore", message=".*Any type hint is inferred as AnyType", category=UserWarning
        )
        from mlflow.cli import _gc_tracking_resources

    import sys

    exp_ids = [e.experiment_id for e in selection.experiments]
    # Each line as gc prints it (one per run deleted): progress on thousands of runs.
    out = _Lines(lambda line: report(f"mlflow gc: {line}"), sys.stdout)
    # The body of `mlflow gc` (mlflow/cli/__init__.py, pinned mlflow 3.17), called with
    # the planned ids: the command itself cannot be told to skip deleted experiments,
    # and it re-checks every id (deleted, old enough) before deleting it. Artifacts
    # proxied by a server (mlflow-artifacts:/) resolve through the tracking URI.
    try:
        with _global_tracking_uri(tracking_uri), contextlib.redirect_stdout(out):
            _gc_tracking_resources(
                backend_store=selection.store,
                run_ids=selection.run_ids,
                experiment_ids=exp_ids,
                logged_model_ids=selection.model_ids,
                older_than=f"{older_than_ms / 1000:.3f}s",
                time_delta=older_than_ms,
                skip_experiments=not exp_ids,
                skip_logged_models=not selection.model_ids,
            )
    finally:
        # What gc did is reported even when it stopped on an error midway.
        out.close_lines()
