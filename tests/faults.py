"""Run ``python -m runner`` with a fault injected at one chosen moment of its life.

    python tests/faults.py --kill POINT N MARKER -- ARGS...
    python tests/faults.py --slow POINT SECONDS -- ARGS...

A ``POINT`` names a function (``module:attr`` or ``module:Class.method``). ``--kill``: the
process sends itself SIGTERM the moment that function's ``N``-th call starts, so the signal
lands inside it (Python runs the handler at the next bytecode, the callee's first). The
same ``POINT`` and ``N`` give the same moment on every run: a failure can be rerun.
``MARKER`` is written with ``fired`` when the signal is sent; with ``N = 0`` nothing is sent
and ``MARKER`` receives every point's call count as JSON instead (to choose moments).
``--slow``: every call of the function waits ``SECONDS`` first, which widens a race window
(two processes asking for the last trial at once) from microseconds to something a test
hits every time.

Points are patched before the runner imports anything of its own, so a name imported with
``from x import f`` elsewhere is the patched one too. Only this process is patched (not
``n_jobs`` workers).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The moments a test can choose from, over a job's whole life.
POINTS = (
    # Start-up: Hydra composes the config.
    "hydra._internal.config_loader_impl:ConfigLoaderImpl.load_configuration",
    # The store: MLflow's schema creation on a new SQLite file, the runner's opening.
    "mlflow.store.db.utils:_initialize_tables",
    "runner.tracking.store:ensure_store",
    # Every SQL statement, MLflow's and Optuna's: spread over everything else.
    "sqlalchemy.engine.base:Connection._execute_context",
    # Run creation, logging and ending.
    "runner.tracking.store:Store.create_run",
    "runner.tracking.store:Store.activate",
    "runner.tracking.store:Store.log_batch",
    "runner.tracking.store:Store.log_files",
    "runner.tracking.store:Store.end_run",
    "runner.tracking.job:JobRun.finish",
    # The entry point's final clean-up, after the last safe point.
    "runner.tracking.session:close_open_runs",
    # Training (the user's code) and the job's own evaluation.
    "sklearn.linear_model._logistic:LogisticRegression.fit",
    "runner.metrics:evaluate",
    # The Optuna study: its storage, asking and telling.
    "optuna.storages._rdb.storage:RDBStorage.__init__",
    "optuna.study.study:Study.ask",
    "optuna.study.study:Study.tell",
    # Files: the sweep's registry of parent runs.
    "runner.locks:file_lock",
)


def _resolve(point: str) -> tuple[Any, str]:
    module, _, path = point.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _patch(point: str, on_call: Callable[[str], None]) -> None:
    owner, name = _resolve(point)
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    func = original.__func__ if isinstance(original, staticmethod | classmethod) else original

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        on_call(point)
        return func(*args, **kwargs)

    if isinstance(original, staticmethod):
        setattr(owner, name, staticmethod(wrapper))
    elif isinstance(original, classmethod):
        setattr(owner, name, classmethod(wrapper))
    else:
        setattr(owner, name, wrapper)


def arm(point: str, n: int, marker: Path) -> None:
    """Patch every point of :data:`POINTS` (and ``point``) to count calls; kill at ``n``."""
    counts: dict[str, int] = {}

    def on_call(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        if n and name == point and counts[name] == n:
            marker.write_text("fired")
            # To the main thread, where Python's handler runs: sent to the process, it could
            # be taken by another thread (SQLAlchemy's, MLflow's) a moment later.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    for name in dict.fromkeys((*POINTS, point)):
        _patch(name, on_call)
    if not n:
        atexit.register(lambda: marker.write_text(json.dumps(counts, indent=1)))


def slow(point: str, seconds: float) -> None:
    """Make every call of ``point`` wait ``seconds`` before it runs."""
    import time

    _patch(point, lambda _: time.sleep(seconds))


def main() -> None:
    """Arm the fault, then run the runner's entry point with the arguments after ``--``."""
    argv = sys.argv[1:]
    sep = argv.index("--")
    opts, args = argv[:sep], argv[sep + 1 :]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if opts[0] == "--kill":
        point, n, marker = opts[1:]
        arm(point, int(n), Path(marker))
    elif opts[0] == "--slow":
        point, seconds = opts[1:]
        slow(point, float(seconds))
    else:
        raise SystemExit("usage: faults.py --kill POINT N MARKER | --slow POINT SECONDS -- ARGS")
    from runner.__main__ import main as runner_main

    sys.argv = [sys.argv[0], *args]
    runner_main()


if __name__ == "__main__":
    main()
