"""Optuna storages and studies: open, check, resume."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner import contract
from runner.errors import ConfigError
from runner.locks import file_lock
from runner.tracking.redact import redact_text

__all__ = [
    "LOCAL_LAUNCHERS",
    "Heartbeat",
    "any_dead_local",
    "check_reachable",
    "counted",
    "fail_stale",
    "heartbeat_on",
    "local_owner_alive",
    "make_storage",
    "open_study",
    "owner",
    "pid_alive",
    "recover_stale",
    "resolve_storage",
    "study_lock",
    "tell",
]


def owner() -> str:
    """``host:pid`` of this sweep process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def resolve_storage(url: Any, launch_dir: Path, sweep_dir: Path, n_jobs: int) -> Any:
    """The storage spec: an absolute SQLAlchemy URL, ``("journal", path)``, or None (memory).

    ``storage: null`` is in-memory as in the official plugin; with ``n_jobs > 1`` the worker
    processes need to reach the trials, so the study then lives in a journal file inside the
    sweep directory (still a fresh study per run). ``journal:////abs/optuna.log`` (or a path
    relative to the launch dir, ``journal:///optuna.log``) is an Optuna journal file, the
    storage Optuna recommends for many processes on one shared file system.
    """
    if url is None:
        if n_jobs > 1:
            return ("journal", str((sweep_dir / ".runner" / "optuna-journal.log").resolve()))
        return None
    url = str(url)
    if url.startswith("journal:///"):
        # As SQLite URLs: journal:///optuna.log is relative, journal:////abs/optuna.log not.
        path = Path(url[len("journal:///") :])
        return ("journal", str(path if path.is_absolute() else (launch_dir / path).resolve()))
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            url = f"sqlite:///{(launch_dir / rel).resolve()}"
    if url.startswith("sqlite:////"):
        db = Path(url[len("sqlite:///") :])
        if not db.parent.is_dir():
            raise ConfigError(
                f"the Optuna storage {url} is in a directory that does not exist ({db.parent}); "
                "create it or set hydra.sweeper.storage to another SQLAlchemy URL "
                "(hydra.sweeper.storage=null: in-memory)."
            )
    return url


#: Launchers whose jobs run on this host: a storage file here is one they can reach.
LOCAL_LAUNCHERS = frozenset(
    {
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    }
)


def check_reachable(raw: Any, spec: Any, launcher: str) -> None:
    """Refuse a storage that the workers of ``launcher`` cannot share with this process.

    Args:
        raw: ``hydra.sweeper.storage`` as configured (for the message).
        spec: The resolved spec (:func:`resolve_storage`).
        launcher: The launcher's ``_target_``.

    Raises:
        ConfigError: In-memory (never shared by separate processes), SQLite ``:memory:``,
            or, with a launcher that runs its jobs on other machines, a relative SQLite
            path or the sweep directory's journal.
    """
    name = launcher.rsplit(".", 1)[-1]
    use = (
        "Use a storage every worker reaches: a PostgreSQL URL "
        "(hydra.sweeper.storage=postgresql+psycopg://user@host/db), or an absolute "
        "sqlite:////shared/optuna.db or journal:////shared/optuna.log on a file system "
        "that every node mounts at the same path."
    )
    if spec is None or (isinstance(spec, str) and spec in ("sqlite://", "sqlite:///:memory:")):
        shown = "null" if raw is None else raw
        raise ConfigError(
            f"hydra.sweeper.storage={shown} is in-memory: the sweep's workers run as jobs of "
            f"the {name} launcher (hydra/launcher), each its own process, and would each "
            f"see a study of their own. {use}"
        )
    if launcher in LOCAL_LAUNCHERS:
        return
    relative = isinstance(raw, str) and (
        (raw.startswith("sqlite:///") and not raw.startswith("sqlite:////"))
        or (raw.startswith("journal:///") and not raw.startswith("journal:////"))
    )
    if relative:
        raise ConfigError(
            f"hydra.sweeper.storage={raw} is a path relative to the launch directory, and the "
            f"{name} launcher runs the sweep's workers on other machines, which would not "
            f"find it. {use}"
        )


def _advisory_key(name: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for ``name`` (stable across hosts)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _pg_lock(url: str, name: str) -> Iterator[None]:
    """``pg_advisory_xact_lock`` on a key derived from ``name``, held for the block.

    The lock lives in the database, so it serialises sweep processes on every machine that
    reaches it; a process that dies drops its connection and with it the lock.
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _advisory_key(name)}
            )
            yield
    finally:
        engine.dispose()


def _is_postgres(spec: Any) -> bool:
    return isinstance(spec, str) and spec.split(":", 1)[0].split("+", 1)[0] in (
        "postgresql",
        "postgres",
    )


def study_lock(spec: Any, name: str, fallback: Path) -> contextlib.AbstractContextManager[Any]:
    """A lock that every sweep process of study ``name`` on storage ``spec`` shares.

    PostgreSQL: a database advisory lock (works across machines). Otherwise a file lock at
    ``fallback`` (SQLite and journal files are on one host, or on a shared file system).
    """
    if _is_postgres(spec):
        return _pg_lock(spec, f"runner.optuna.study:{name}")
    return file_lock(fallback)


def _retry_stale(study: Any, trial: Any) -> None:
    """Optuna's callback for a trial failed by the heartbeat: queue its params again.

    The trial is already FAIL (no attr can be set on it any more); its retry's user attr
    ``runner.retry_of`` is what takes it out of the count (:func:`counted`).
    """
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={contract.RETRY_ATTR: trial.number})


def make_storage(
    spec: Any, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> Any:
    """An Optuna storage object from a spec of :func:`resolve_storage`.

    ``heartbeat_interval`` (seconds, RDB storages only) turns on Optuna's trial heartbeat:
    a RUNNING trial whose heartbeat is older than ``grace_period`` (default twice the
    interval) is failed by the next sweep process that looks, and its params queued again.
    """
    import warnings

    import optuna

    if spec is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(spec, tuple):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(spec[1]).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(spec[1]))
    kwargs: dict[str, Any] = {}
    lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if spec.startswith("sqlite:///"):
        # Several trial processes write at once; wait for SQLite's lock instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        # Two sweeps opening a new file at once race on Optuna's schema creation
        # (UNIQUE constraint failed: alembic_version.version_num): one at a time.
        lock = file_lock(Path(spec[len("sqlite:///") :] + ".runner.lock"))
    elif _is_postgres(spec):
        # The same race on a fresh PostgreSQL database, from any machine.
        lock = _pg_lock(spec, "runner.optuna.schema")
    if heartbeat_interval:
        kwargs.update(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(grace_period) if grace_period else None,
            heartbeat_stale_trial_callback=_retry_stale,
        )
    try:
        with lock, warnings.catch_warnings():
            # heartbeat_interval is flagged experimental; it has been stable since Optuna 2.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(spec, **kwargs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"the Optuna storage {redact_text(spec)} cannot be opened: {first}. Check "
            "hydra.sweeper.storage (any SQLAlchemy URL, e.g. sqlite:///optuna.db or "
            "postgresql+psycopg://user@host/db; null: in-memory)."
        ) from None


def heartbeat_on(storage: Any) -> bool:
    """Whether ``storage`` (a study's, possibly Optuna's cache wrapper) beats."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def fail_stale(study: Any) -> list[int]:
    """Fail (and re-queue) RUNNING trials whose heartbeat stopped: killed on any machine.

    Optuna's ``fail_stale_trials`` step for step, returning the numbers of the trials this
    process failed (another process failing one first is Optuna's UpdateFinishedTrialError),
    so that the caller can end their MLflow runs.
    """
    if not heartbeat_on(study._storage):
        return []
    import copy

    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    callback = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        trial = copy.deepcopy(storage.get_trial(trial_id))
        if callback is not None:
            callback(study, trial)
        numbers.append(trial.number)
    return numbers


def open_study(storage: Any, *, name: str, directions: list[str], sampler: Any, pruner: Any) -> Any:
    """Load study ``name`` or create it; its directions must be ``directions``."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        try:
            return optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,  # type: ignore[arg-type]  # validated strings
            )
        except optuna.exceptions.DuplicatedStudyError:  # another process was first
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(
            f"the study {name!r} already exists with direction(s) {have}, not {directions}. "
            "Use the same hydra.sweeper.direction, or another hydra.sweeper.study_name for "
            "a new study."
        )
    return study


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host is alive."""
    return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """``study.tell``, where the grid sampler's ``study.stop()`` (grid exhausted) is a no-op.

    ``GridSampler.after_trial`` calls ``study.stop()``, which raises outside
    ``study.optimize``; Optuna stores the trial's state first (a ``finally``), and the sweep
    stops by its count (``n_trials`` is capped at the grid's size), so nothing is lost.
    """
    import optuna

    try:
        study.tell(trial, **kwargs)
    except RuntimeError as e:
        if not (isinstance(study.sampler, optuna.samplers.GridSampler) and "Study.stop" in str(e)):
            raise


def void_and_retry(study: Any, storage: Any, trial: Any) -> None:
    """Mark a trial that never finished FAIL, out of the count, and queue its params again.

    Its retry is queued first, and only once: a process killed half-way (joblib kills the
    other workers as soon as one job raises) leaves the trial RUNNING with its owner dead,
    and whoever voids it again (:func:`recover_stale`) finds the retry there. Queued last,
    a kill between the FAIL and the queueing lost the trial's params for good.
    """
    from optuna.trial import TrialState

    if trial.state != TrialState.RUNNING:
        return  # it finished after all (the interrupt came after its tell)
    retried = any(
        t.user_attrs.get(contract.RETRY_ATTR) == trial.number
        for t in study.get_trials(deepcopy=False)
    )
    if trial.params and not retried:
        study.enqueue_trial(dict(trial.params), user_attrs={contract.RETRY_ATTR: trial.number})
    storage.set_trial_system_attr(trial._trial_id, contract.VOID_ATTR, True)
    tell(study, trial.number, state=TrialState.FAIL)


def local_owner_alive(trial: Any) -> bool:
    """Whether ``trial``'s sweep process is a live process on this host."""
    h, _, pid = str(trial.system_attrs.get(contract.OWNER_ATTR, "")).rpartition(":")
    return h == socket.gethostname() and pid.isdigit() and _alive(int(pid))


def any_dead_local(study: Any) -> bool:
    """Whether a RUNNING trial's sweep process was on this host and is gone (a cheap look
    before :func:`recover_stale` is run under the study's lock)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        h, _, pid = str(trial.system_attrs.get(contract.OWNER_ATTR, "")).rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            return True
    return False


def recover_stale(study: Any, storage: Any) -> list[int]:
    """Fail and re-queue RUNNING trials whose sweep process on this host is gone.

    A sweep that ends by Ctrl-C or SIGTERM does this itself; this covers SIGKILL and
    power loss. Trials owned by live processes (a cooperating sweep) are left alone.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    done: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(trial.system_attrs.get(contract.OWNER_ATTR, ""))
        h, _, pid = who.rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            void_and_retry(study, storage, trial)
            done.append(trial.number)
    return done


def counted(trials: list[Any]) -> list[Any]:
    """Trials that count towards ``n_trials``: started, not voided by an interruption, and
    not a FAIL whose params were queued again (a trial of a process that died)."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get(contract.RETRY_ATTR) for t in trials} - {None}
    return [
        t
        for t in trials
        if t.state != TrialState.WAITING
        and not t.system_attrs.get(contract.VOID_ATTR, False)
        and not (t.state == TrialState.FAIL and t.number in retried)
    ]


class Heartbeat:
    """A daemon thread that records the heartbeat of this process's RUNNING trials.

    The sweep process beats (not the job): a killed sweep process, on any machine, stops
    beating for all its trials, which is what :func:`fail_stale` on the survivors detects.
    """

    def __init__(self, storage: Any, trial_ids: Any, interval: float) -> None:
        import threading

        self.storage = storage
        self.trial_ids = trial_ids  # callable -> list of trial ids
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids()):
                with contextlib.suppress(Exception):  # finished meanwhile, or a DB blip
                    self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
