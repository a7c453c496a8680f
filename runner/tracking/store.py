"""The MLflow side of a job: the one module that talks to the tracking store.

Everything goes through :class:`Store`, built on ``MlflowClient`` with an explicit tracking
URI: no run is ever created implicitly by a fluent call. Its write methods are the one
chokepoint of the redaction (:mod:`runner.tracking.redact`): every run name, param, tag
(descriptions and error messages included) and text artifact is redacted there, whoever
built it. Every call that reaches the store is
fenced (:func:`runner.interrupts.fenced`): a signal never cuts one in half, even from inside
the user's code (step metrics logged from a ``fit``). The fluent API is used for exactly
two things that need it (model logging and autolog), and only while the job's run is
explicitly activated.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from runner import contract, interrupts
from runner.errors import TrackingError
from runner.tracking.redact import redact_mapping, redact_text, redact_yaml_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "Store",
    "check_reachable",
    "command_uri",
    "connect",
    "ensure_store",
    "no_telemetry",
    "public_uri",
    "resolve_uri",
    "warm_up",
]

log = logging.getLogger(__name__)

#: MLflow's own limits (mlflow/utils/validation.py).
MAX_TAG_VALUE = 8000
_BATCH_PARAMS_TAGS = 100
_BATCH_METRICS = 1000


def no_telemetry() -> None:
    """Turn MLflow's usage telemetry off (unless the user chose) before mlflow is imported.

    Its background thread, when it cannot reach its endpoint (no network on most compute
    nodes), unsets ``_MLFLOW_TELEMETRY_SESSION_ID`` while other threads iterate
    ``os.environ`` to build requests: they then fail with ``KeyError`` (seen here with
    parallel artifact uploads and parallel sweep workers). Runs are not telemetry anyway.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_uri(uri: str | None, launch_dir: Path) -> str:
    """The tracking URI a job logs to.

    Args:
        uri: ``backend.uri`` (the command line, else ``MLFLOW_TRACKING_URI``), or None.
        launch_dir: Where the user launched from; the default store is ``mlflow.db`` there.

    Returns:
        An absolute URI, so every job of a sweep logs to the same store whatever its cwd.
    """
    if not uri:
        return f"sqlite:///{(launch_dir / 'mlflow.db').resolve()}"
    uri = str(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        if rel and rel != ":memory:":
            return f"sqlite:///{(launch_dir / rel).resolve()}"
    scheme = urlparse(uri).scheme
    if not scheme or scheme == "file":
        raise TrackingError(
            f"tracking URI {uri!r} is a file-store path; MLflow's file store is deprecated and "
            f"this runner does not write to it. Use a SQLite file instead: "
            f"backend.uri=sqlite:///{Path(urlparse(uri).path or uri).name or 'mlflow'}.db"
        )
    return uri


def public_uri(uri: str) -> str:
    """The URI with any credentials masked, fit for tags and messages."""
    return redact_text(uri)


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail within seconds, with the URI in the message, when the store cannot be reached.

    MLflow's own client retries an unreachable server for minutes; this check does one
    request with a short timeout first.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as e:
            raise TrackingError(
                f"the MLflow tracking server at {public_uri(uri)} does not answer "
                f"({type(e).__name__}). Start it (python -m runner.server) or point "
                "backend.uri / MLFLOW_TRACKING_URI at a running one; backend=none turns "
                "tracking off."
            ) from None
    elif parsed.scheme == "sqlite":
        db = Path(uri[len("sqlite:///") :])
        if not db.parent.is_dir():
            raise TrackingError(
                f"the SQLite tracking store {uri} is in a directory that does not exist "
                f"({db.parent}); create it or choose another backend.uri."
            )
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(
                f"the SQLite tracking store {uri} is not writable; fix its permissions or "
                "choose another backend.uri."
            )


def command_uri(uri: str | None) -> str:
    """The store a command reads: ``uri`` (``--tracking-uri``), else ``MLFLOW_TRACKING_URI``,
    else ``mlflow.db`` in the current directory; made absolute as the runner's own is."""
    return resolve_uri(uri or os.environ.get("MLFLOW_TRACKING_URI") or None, Path.cwd())


def connect(uri: str) -> MlflowClient:
    """A client on the existing store ``uri``, checked within seconds: every command's way in.

    Raises:
        TrackingError: The SQLite file does not exist (MLflow would silently create an empty
            store there), or the tracking server does not answer.
    """
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if str(db) != ":memory:" and not db.is_file():
            raise TrackingError(
                f"there is no tracking store at {uri} (no file {db}). Run the command where "
                "your mlflow.db is, or pass --tracking-uri URI / set MLFLOW_TRACKING_URI."
            )
    check_reachable(uri)
    no_telemetry()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


#: An arbitrary, fixed key for PostgreSQL's advisory lock around schema creation.
_PG_SCHEMA_LOCK = 0x6D6C666C  # "mlfl"


@interrupts.fenced
def ensure_store(uri: str) -> None:
    """Create or upgrade a database store's schema once, whoever else starts at the same time.

    MLflow creates the tables (and runs its Alembic migrations) on a store's first use; when
    several processes open a fresh SQLite or PostgreSQL store at once, they race on those
    migrations and fail. The first process to take the lock does the work; the others then
    find the schema in place. Other stores (http, ...) are left alone: a server owns its
    store (``python -m runner.server`` calls this before it starts).
    """
    no_telemetry()
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "sqlite":
        from runner.locks import file_lock

        with file_lock(Path(f"{uri[len('sqlite:///') :]}.lock")):
            _open_store(uri)
    elif scheme == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_PG_SCHEMA_LOCK})"))
                try:
                    _open_store(uri)
                finally:
                    conn.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({_PG_SCHEMA_LOCK})"))
        except sqlalchemy.exc.OperationalError as e:
            raise TrackingError(
                f"the PostgreSQL tracking store {public_uri(uri)} cannot be reached: "
                f"{str(e.orig).strip().splitlines()[0] if e.orig else e}. Check PGHOST, PGPORT, "
                "PGUSER, PGDATABASE and PGPASSWORD (conf/backend/postgres_s3.yaml)."
            ) from None
        finally:
            engine.dispose()


def _open_store(uri: str) -> None:
    # MLflow caches one store object per URI in the process; its first creation runs the
    # schema creation/migrations.
    from mlflow.tracking._tracking_service.utils import _get_store

    _get_store(uri)


def _redact_file(name: str, content: str | bytes) -> str | bytes:
    """An artifact's content with its secrets redacted (binary files as they are)."""
    if isinstance(content, bytes):
        if b"\x00" in content[:8192]:
            return content
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            return content
        cleaned = _redact_file(name, text)
        return content if cleaned == text else str(cleaned).encode("utf-8")
    if name.endswith((".yaml", ".yml")):
        return redact_yaml_text(content)
    return redact_text(content)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store:
    """A tracking store reached through one ``MlflowClient``."""

    def __init__(self, uri: str, *, artifact_root: str | None = None) -> None:
        no_telemetry()
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.artifact_root = artifact_root.rstrip("/") if artifact_root else None
        #: The URI these runs were meant for, when they are buffered locally instead.
        self.buffered_for: str | None = None
        self._experiments: dict[str, str] = {}
        # Model logging and autolog use the fluent API, which reads the global URI.
        mlflow.set_tracking_uri(uri)
        # The client creates or upgrades a SQL store's schema here; a SIGTERM in the middle
        # of a migration leaves a store no client can open, so it waits until after.
        with interrupts.held():
            self.client: MlflowClient = MlflowClient(tracking_uri=uri)

    # -- errors ---------------------------------------------------------------------------
    def _fail(self, what: str, e: Exception) -> TrackingError:
        return TrackingError(f"{what} failed on the tracking store {public_uri(self.uri)}: {e}")

    # -- experiments and runs -------------------------------------------------------------
    @interrupts.fenced
    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (safe under concurrency)."""
        # One lookup per experiment and process: a sweep's jobs share it.
        if name in self._experiments:
            return self._experiments[name]
        self._experiments[name] = self._experiment_id(name)
        return self._experiments[name]

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"experiment {name!r} is deleted in {public_uri(self.uri)}; restore "
                        f"it (mlflow experiments restore --experiment-id {exp.experiment_id}) "
                        "or choose another experiment_name."
                    )
                return str(exp.experiment_id)
            try:
                return str(
                    self.client.create_experiment(name, artifact_location=self._artifacts(name))
                )
            except MlflowException:
                # Another job created it between our lookup and our create.
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                return str(exp.experiment_id)
        except MlflowException as e:
            raise self._fail(f"opening experiment {name!r}", e) from e

    def _artifacts(self, experiment: str) -> str | None:
        # With a SQLite store and no server MLflow would put artifacts in ./mlruns, which
        # later makes a plain `mlflow` client in that directory fall back to the deprecated
        # file store; keep them beside the database instead. Database stores with an
        # artifact root (postgres_s3) put each experiment under it, by name.
        slug = re.sub(r"[^\w.\-]+", "_", experiment).strip("._") or "experiment"
        if self.artifact_root:
            return f"{self.artifact_root}/{slug}"
        if not self.uri.startswith("sqlite:///"):
            return None
        root = Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts" / slug
        return root.as_uri()

    @interrupts.fenced
    def create_run(
        self,
        experiment_id: str,
        *,
        name: str,
        tags: Mapping[str, str],
        parent_id: str | None = None,
    ) -> str:
        """Create a RUNNING run, nested under ``parent_id`` through MLflow's own tag."""
        from mlflow.exceptions import MlflowException

        all_tags = {k: v[:MAX_TAG_VALUE] for k, v in redact_mapping(tags).items()}
        if parent_id:
            all_tags[contract.PARENT_RUN_ID] = parent_id
        try:
            run = self.client.create_run(experiment_id, run_name=redact_text(name), tags=all_tags)
        except MlflowException as e:
            raise self._fail("creating a run", e) from e
        return str(run.info.run_id)

    @interrupts.fenced
    def log_batch(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Iterable[tuple[str, float, int, int]] = (),
        tags: Mapping[str, str] | None = None,
        model_id: str | None = None,
    ) -> None:
        """Log params, metrics ``(key, value, step, timestamp_ms)`` and tags in few requests.

        Params and tags (100 a request) share requests with metrics (up to MLflow's 1000
        entities a request). With ``model_id``, the metrics at step 0 are also linked to that
        logged model, as MLflow's own ``log_model`` links the metrics a run already has.
        """
        from itertools import zip_longest

        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        p = [Param(k, v) for k, v in redact_mapping(params or {}).items()]
        t = [RunTag(k, v[:MAX_TAG_VALUE]) for k, v in redact_mapping(tags or {}).items()]
        m = [
            Metric(k, float(v), int(ts), int(step), model_id=model_id if step == 0 else None)
            for k, v, step, ts in metrics
        ]
        pt: list[Any] = [*p, *t]
        try:
            for pt_chunk, m_chunk in zip_longest(
                _chunks(pt, _BATCH_PARAMS_TAGS), _chunks(m, _BATCH_METRICS - _BATCH_PARAMS_TAGS)
            ):
                pt_chunk = pt_chunk or []
                self.client.log_batch(
                    run_id,
                    params=[x for x in pt_chunk if isinstance(x, Param)],
                    tags=[x for x in pt_chunk if isinstance(x, RunTag)],
                    metrics=m_chunk or [],
                )
        except MlflowException as e:
            raise self._fail(f"logging to run {run_id}", e) from e

    @interrupts.fenced
    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set one tag."""
        value = redact_mapping({key: value})[key]
        self.client.set_tag(run_id, key, value[:MAX_TAG_VALUE])

    @interrupts.fenced
    def log_files(self, run_id: str, files: Mapping[str, str | bytes]) -> None:
        """Log in-memory files (``artifact path -> content``), uploaded side by side.

        Through a tracking server every file is one HTTP request, and MLflow uploads a
        directory's files one after the other; uploading them in parallel costs about one
        round trip instead of one per file.
        """
        if not files:
            return
        from concurrent.futures import ThreadPoolExecutor

        with tempfile.TemporaryDirectory(prefix="runner-artifacts-") as tmp:
            uploads: list[tuple[str, str | None]] = []
            for rel, content in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                content = _redact_file(rel, content)
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content, encoding="utf-8")
                parent = Path(rel).parent.as_posix()
                uploads.append((str(path), None if parent == "." else parent))
            if len(uploads) == 1 or not self.uri.startswith(("http://", "https://")):
                self.client.log_artifacts(run_id, tmp)
                return
            # The first upload resolves (and caches) the run's artifact repository.
            self.client.log_artifact(run_id, *uploads[0])
            with ThreadPoolExecutor(max_workers=min(8, len(uploads) - 1)) as pool:
                for future in [pool.submit(self.client.log_artifact, run_id, *u)
                               for u in uploads[1:]]:  # fmt: skip
                    future.result()

    @interrupts.fenced
    def log_inputs(self, run_id: str, datasets: list[Any]) -> None:
        """Log MLflow ``DatasetInput`` entities (one request); names and sources redacted."""
        from mlflow.entities import Dataset, DatasetInput
        from mlflow.exceptions import MlflowException

        if not datasets:
            return
        clean = []
        for item in datasets:
            d = item.dataset
            safe = Dataset(
                name=redact_text(d.name),
                digest=d.digest,
                source_type=d.source_type,
                source=redact_text(d.source),
                schema=d.schema,
                profile=d.profile,
            )
            clean.append(DatasetInput(safe, list(item.tags)))
        try:
            self.client.log_inputs(run_id, datasets=clean)
        except MlflowException as e:
            if "unique constraint" not in str(e).lower():
                raise self._fail(f"logging the datasets of run {run_id}", e) from e
            # MLflow's SQL store looks a dataset up, then inserts it: two jobs logging the
            # same new dataset at once (a sweep's first parallel trials) both insert, and
            # one fails on the (experiment, name, digest) key. Its transaction was rolled
            # back; once more, the dataset is found and only linked to the run.
            try:
                self.client.log_inputs(run_id, datasets=clean)
            except MlflowException as again:
                raise self._fail(f"logging the datasets of run {run_id}", again) from again

    @interrupts.fenced
    def end_run(self, run_id: str, status: str) -> None:
        """End a run with ``FINISHED``, ``FAILED`` or ``KILLED`` (and deactivate it)."""
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)
        else:
            self.client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))

    @interrupts.fenced
    def activate(self, run_id: str, *, system_metrics: float | None = None) -> None:
        """Make ``run_id`` the active fluent run: model logging and autolog need one.

        Args:
            run_id: The job's run.
            system_metrics: Sample MLflow's system metrics every this many seconds while
                the run is active (its monitor thread stops in :meth:`end_run`); None: off.
        """
        import mlflow

        if system_metrics is None:
            mlflow.start_run(run_id=run_id, log_system_metrics=False)
            return
        # MLflow reads the interval from its environment variable when the monitor starts;
        # set it for this start only, so that it does not leak into the job's subprocesses.
        var = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
        before = os.environ.get(var)
        os.environ[var] = str(system_metrics)
        try:
            mlflow.start_run(run_id=run_id, log_system_metrics=True)
        finally:
            if before is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = before


def warm_up() -> None:
    """Do now the first-use work that a process's first logged model would pay inside it.

    For a launched sweep worker, before it asks its first trial (``warm.import_ahead``):
    MLflow's map of installed packages, which every ``log_model`` reads for its
    requirements check (``importlib_metadata.packages_distributions()`` walks every
    installed distribution's files: 0.3 s here, 0.9 s under cProfile; once per process).
    """
    no_telemetry()
    from mlflow.utils import requirements_utils

    # Private; cached in the module since MLflow 2. A release without it leaves the walk
    # to the first log_model, as before.
    init = getattr(requirements_utils, "_init_packages_to_modules_map", None)
    if callable(init):
        init()
