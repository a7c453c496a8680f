"""Per-process tracking state: the stores this process opened, its job's run, its sweep.

Hydra turns exceptions raised inside callbacks into warnings, so a callback that cannot start
a run records the error here and :meth:`State.current` re-raises it inside the job, where it
fails the job as it should. Under process launchers every process has its own state. The
entry points end whatever is still open on every way out (:func:`close_open_runs`); tests
start afresh with :func:`reset`.
"""

from __future__ import annotations

import atexit
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner import contract, interrupts
from runner import trial as trial_mod
from runner.errors import ConfigError, TrackingError
from runner.tracking.backends import backend_of
from runner.tracking.job import JobRun, NullRun
from runner.tracking.parents import SweepParents
from runner.tracking.redact import redact_file
from runner.tracking.settings import Settings, settings_of
from runner.tracking.store import Store, check_reachable, ensure_store, resolve_uri

__all__ = [
    "BUFFER_DIR",
    "ON_UNAVAILABLE",
    "State",
    "Sweep",
    "close_job_run",
    "close_open_runs",
    "enabled",
    "is_runner_app",
    "launch_dir",
    "quiet_mlflow_noise",
    "redact_on_exit",
    "redact_pending",
    "reset",
    "run_and_close",
    "state",
    "store_for",
    "uri_of",
]

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """A sweep this process launched (its parents are ended here)."""

    uri: str
    dir: Path


class State:
    """The tracking state of this process."""

    def __init__(self) -> None:
        self.job: JobRun | NullRun | None = None
        self.job_error: BaseException | None = None
        self.sweep: Sweep | None = None

    def current(self) -> JobRun | NullRun:
        """The job's run; raises the error that kept the callback from starting it."""
        if self.job_error is not None:
            raise self.job_error
        return self.job if self.job is not None else NullRun()


state = State()


_stores: dict[str, Store] = {}

#: Where runs go while the tracking server is down (``tracking.on_unavailable=buffer``).
BUFFER_DIR = ".runner_buffer"
ON_UNAVAILABLE = ("fail", "buffer")


#: MLflow's log lines that tell a runner user nothing, by logger: dropped by message, so
#: every other line of those loggers still shows.
_NOISE: dict[str, tuple[str, ...]] = {
    # Every scikit-learn (and torch) model logged: the runner picks cloudpickle on purpose
    # (MLflow's skops default imports torch, 5 s a job; see JobRun.log_model), and says
    # once, in docs/summaries.md, that a logged model is a pickle to load from stores you
    # trust. The warning on each of a sweep's runs said nothing new after the first.
    "mlflow.sklearn": ("can execute arbitrary code during deserialization",),
    "mlflow.pytorch": ("can execute arbitrary code during deserialization",),
    # A new store's schema creation, before anything of the runner's: store_for says it
    # in one line of its own ("created the MLflow store ...").
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database"),
    "alembic.runtime.migration": ("Context impl ", "Will assume ", "Running upgrade "),
}


class _DropNoise(logging.Filter):
    """Drops the records of one logger whose message contains one of ``needles``."""

    def __init__(self, needles: tuple[str, ...]) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(n in message for n in self.needles)


def quiet_mlflow_noise() -> None:
    """Drop MLflow's noisy lines (:data:`_NOISE`) from now on in this process; idempotent."""
    for name, needles in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(needles))


def _new_sqlite(uri: str) -> Path | None:
    """The SQLite file ``uri`` names when it does not exist yet (its first use)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///") :])
    return path if not path.exists() or path.stat().st_size == 0 else None


def store_for(uri: str, config: DictConfig | None = None) -> Store:
    """This process's :class:`Store` for ``uri``, opened (checked, schema made) once.

    With ``tracking.on_unavailable=buffer`` in ``config``, an unreachable store is replaced
    by a local buffer (``.runner_buffer/mlflow.db``) that ``python -m runner.sync`` replays.

    Raises:
        TrackingError: The store cannot be reached (and no buffer is configured).
    """
    # One client per store and process; the reachability check and the schema creation run
    # once per store and process, before the first run is created.
    if uri in _stores:
        return _stores[uri]
    quiet_mlflow_noise()
    try:
        check_reachable(uri)
        fresh = _new_sqlite(uri)
        ensure_store(uri)
        if fresh is not None and fresh.exists():
            log.info("created the MLflow store %s (a new SQLite file); runs are logged there", uri)
    except TrackingError as e:
        if config is None or on_unavailable(config) != "buffer":
            raise
        buffer = resolve_uri(f"sqlite:///{BUFFER_DIR}/mlflow.db", Path(launch_dir(config)))
        Path(buffer[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        log.warning(
            "%s Buffering runs in %s instead (tracking.on_unavailable=buffer); replay them "
            "with `python -m runner.sync` once the server is back.",
            e,
            buffer,
        )
        store = store_for(buffer)
        store.buffered_for = uri
        _stores[uri] = store
        return store
    root = OmegaConf.select(config, "backend.artifact_root", default=None) if config else None
    _stores[uri] = Store(uri, artifact_root=str(root) if root else None)
    return _stores[uri]


def on_unavailable(config: DictConfig) -> str:
    """``tracking.on_unavailable``: ``fail`` (default) or ``buffer``."""
    value = str(OmegaConf.select(config, "tracking.on_unavailable", default="fail"))
    if value not in ON_UNAVAILABLE:
        raise ConfigError(
            f"tracking.on_unavailable is {value!r}; it must be one of {', '.join(ON_UNAVAILABLE)}."
        )
    return value


def is_runner_app(config: DictConfig) -> bool:
    """Whether ``config`` is the runner's own app's (its ``backend`` node, with ``enabled``:
    another app's ``backend: nccl`` is not it)."""
    node = OmegaConf.select(config, "backend", default=None)
    return isinstance(node, DictConfig) and "enabled" in node


def enabled(config: DictConfig) -> bool:
    """Whether jobs are tracked: the runner's ``backend.enabled`` (``backend=none`` is
    off), or, in any other app, whether the MLflow callback is configured."""
    if is_runner_app(config):
        return bool(OmegaConf.select(config, "backend.enabled", default=False))
    return settings_of(config) is not None


def uri_of(config: DictConfig) -> str:
    """The absolute tracking URI: the runner's backend, else the callback's
    ``tracking_uri`` (default ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the launch dir).
    """
    if is_runner_app(config):
        return backend_of(config, Path(launch_dir(config))).uri
    settings = settings_of(config) or Settings()
    return resolve_uri(settings.uri(), Path(launch_dir(config)))


def launch_dir(config: DictConfig) -> str:
    """Where the user launched the command (Hydra's ``runtime.cwd``)."""
    return str(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or Path.cwd())


#: Files Hydra wrote that are redacted on every way out (see :func:`redact_on_exit`).
_to_redact: set[Path] = set()
_atexit = False


def redact_on_exit(path: Path) -> None:
    """Redact ``path`` (one of Hydra's YAML files) when this process ends, however it ends.

    Hydra writes a sweep's ``multirun.yaml`` (raw overrides, secrets included) before its
    first job; a sweep that fails before any job starts (a bad override, a failed
    validation) never reaches the job's own redaction. The entry points' clean-up
    (:func:`close_open_runs`) and, in an app of its own, an exit handler do it then.
    """
    global _atexit
    _to_redact.add(Path(path))
    if not _atexit:
        atexit.register(redact_pending)
        _atexit = True


def redact_pending() -> None:
    """Redact the files registered with :func:`redact_on_exit` (cheap when already clean)."""
    for path in sorted(_to_redact):
        try:
            redact_file(path)
        except Exception as e:
            log.error("could not redact %s: %s", path, e)


def close_job_run(status: str) -> None:
    """End this process's job run (if open) with ``status``; sweep parents stay open.

    The Optuna sweeper calls this when Ctrl-C or SIGTERM interrupts a trial's job, which
    Hydra's ``run_job`` lets through without calling ``on_job_end``.
    """
    job, state.job, state.job_error = state.job, None, None
    if isinstance(job, JobRun):
        try:
            job.set_tags({contract.TRIAL_STATE: "FAIL"} if trial_mod.current() else {})
            job.finish(status)
        except Exception as e:
            log.error("could not end run %s: %s", job.run_id, e)


def close_open_runs(status: str, error: BaseException | None = None) -> None:
    """End whatever this process left open: its job's run and its sweep's parents.

    The entry point calls this on every way out (success, error, Ctrl-C, SIGTERM), since
    Hydra calls ``on_multirun_end`` only when a sweep returns normally. A second Ctrl-C
    meanwhile is ignored: it would leave the rest RUNNING.
    """
    with interrupts.held(drop=True):
        _close_open_runs(status, error)


def _close_open_runs(status: str, error: BaseException | None) -> None:
    redact_pending()
    job, state.job = state.job, None
    if isinstance(job, JobRun):
        try:
            job.finish(status, error=error)
        except Exception as e:
            log.error("could not end run %s: %s", job.run_id, e)
    sweep, state.sweep = state.sweep, None
    if sweep is None:
        return
    for uri, parents in SweepParents(sweep.dir).all().items():
        store = store_for(uri)
        for run_id in parents.values():
            try:
                if store.client.get_run(run_id).info.status == "RUNNING":
                    store.end_run(run_id, status)
            except Exception as e:
                log.error("could not end sweep run %s: %s", run_id, e)


def run_and_close(body: Callable[[], int]) -> int:
    """Run ``body`` (it returns an exit status) and end whatever it left open, as every entry
    point of the runner does (``python -m runner``, ``python -m runner.replay``).

    Signals must already be cooperative (:func:`runner.interrupts.install`). On Ctrl-C or
    SIGTERM the open runs end KILLED and the status is 130, also when the signal came after
    the last safe point or during this clean-up (which it never cuts short); otherwise they
    end FINISHED (status 0) or FAILED. Any other exception propagates once they are ended.
    """
    status = "FAILED"
    try:
        code = body()
        # A signal that came after the last safe point: the work is done, but the user
        # asked to stop, and the exit status says so.
        interrupts.checkpoint()
        status = "FINISHED" if code == 0 else "FAILED"
    except KeyboardInterrupt:
        status, code = "KILLED", 130
        interrupts.handled()
        print("interrupted: open runs were ended as KILLED", file=sys.stderr)
    finally:
        close_open_runs(status)
    if status != "KILLED" and interrupts.pending() is not None:
        # The runs are ended as they ran; the exit status says the user asked to stop.
        print("interrupted during the final clean-up", file=sys.stderr)
        return 130
    return code


def reset() -> None:
    """Forget this process's stores, job and sweep (tests start each from nothing)."""
    state.job, state.job_error, state.sweep = None, None, None
    _stores.clear()
    _to_redact.clear()
