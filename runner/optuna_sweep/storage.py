"""Optuna storages and studies: open, check, resume."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.errors import ConfigError
from runner.tracking.redact import redact_text

__all__ = [
    "OWNER_ATTR",
    "VOID_ATTR",
    "counted",
    "make_storage",
    "open_study",
    "owner",
    "recover_stale",
    "resolve_storage",
]

#: Trial system attrs: which process runs it, and whether it counts towards n_trials.
OWNER_ATTR = "runner.owner"
VOID_ATTR = "runner.void"


def owner() -> str:
    """``host:pid`` of this sweep process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def resolve_storage(url: Any, launch_dir: Path, sweep_dir: Path, n_jobs: int) -> Any:
    """The storage spec: an absolute SQLAlchemy URL, ``("journal", path)``, or None (memory).

    ``storage: null`` is in-memory as in the official plugin; with ``n_jobs > 1`` the worker
    processes need to reach the trials, so the study then lives in a journal file inside the
    sweep directory (still a fresh study per run).
    """
    if url is None:
        if n_jobs > 1:
            return ("journal", str((sweep_dir / ".runner" / "optuna-journal.log").resolve()))
        return None
    url = str(url)
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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created), shared by every process on this host."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def make_storage(spec: Any) -> Any:
    """An Optuna storage object from a spec of :func:`resolve_storage`."""
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
    try:
        with lock:
            return optuna.storages.RDBStorage(spec, **kwargs)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"the Optuna storage {redact_text(spec)} cannot be opened: {first}. Check "
            "hydra.sweeper.storage (any SQLAlchemy URL, e.g. sqlite:///optuna.db or "
            "postgresql+psycopg://user@host/db; null: in-memory)."
        ) from None


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def void_and_retry(study: Any, storage: Any, trial: Any) -> None:
    """Mark a trial that never finished FAIL, out of the count, and queue its params again."""
    from optuna.trial import TrialState

    if trial.state != TrialState.RUNNING:
        return  # it finished after all (the interrupt came after its tell)
    storage.set_trial_system_attr(trial._trial_id, VOID_ATTR, True)
    study.tell(trial.number, state=TrialState.FAIL)
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"runner.retry_of": trial.number})


def recover_stale(study: Any, storage: Any) -> list[int]:
    """Fail and re-queue RUNNING trials whose sweep process on this host is gone.

    A sweep that ends by Ctrl-C or SIGTERM does this itself; this covers SIGKILL and
    power loss. Trials owned by live processes (a cooperating sweep) are left alone.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    done: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(trial.system_attrs.get(OWNER_ATTR, ""))
        h, _, pid = who.rpartition(":")
        if h == host and pid.isdigit() and not _alive(int(pid)):
            void_and_retry(study, storage, trial)
            done.append(trial.number)
    return done


def counted(trials: list[Any]) -> list[Any]:
    """Trials that count towards ``n_trials``: started, and not voided by an interruption."""
    from optuna.trial import TrialState

    return [
        t
        for t in trials
        if t.state != TrialState.WAITING and not t.system_attrs.get(VOID_ATTR, False)
    ]
