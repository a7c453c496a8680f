"""Run ``python -m runner`` with a fault injected at one chosen moment of its life.

    python tests/faults.py --kill POINT N MARKER -- ARGS...
    python tests/faults.py --slow POINT SECONDS -- ARGS...
    python tests/faults.py --zygote

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

``--zygote``: many ``--kill`` moments without paying the imports (mlflow, optuna, sklearn,
hydra: 2.5-3 s) for each. The zygote patches every point of :data:`POINTS`, imports the
runner's entry point and :data:`PRELOADS`, in the order a ``--kill`` process does, checks
that it is safe to fork (one thread, no database connection, no socket), then reads one
request per line on stdin, a JSON object::

    {"point": POINT, "n": N, "marker": MARKER, "args": [ARGS...], "cwd": DIR,
     "stdout": FILE, "stderr": FILE}

and for each forks a child that is a ``--kill`` process of its own: its own pid, stdin
``/dev/null``, stdout and stderr to those files, ``cwd`` and ``sys.argv`` as the command
would have them; it leaves the zygote's loop and runs :func:`main`'s ``--kill`` path, then
exits through the interpreter's normal shutdown (atexit handlers, threading's shutdown).
The zygote answers ``{"pid": PID}`` at the fork and ``{"pid": PID, "exit": STATUS}`` when
the child has ended (``STATUS`` as :attr:`subprocess.Popen.returncode`: minus the signal's
number for a child a signal killed). It starts by writing ``{"ready": PID}`` and exits at
the end of its stdin. ``tests/test_faults.py`` checks that its children count the same
calls as a fresh process.
"""

from __future__ import annotations

import atexit
import functools
import gc
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


class _Fault:
    """The armed fault: which call of which point sends SIGTERM, and the calls counted."""

    def __init__(self) -> None:
        self.point = ""
        self.n = 0
        self.marker: Path | None = None
        self.counts: dict[str, int] = {}
        #: The points patched so far (the zygote patches them before its children arm).
        self.patched: set[str] = set()


_fault = _Fault()


def _on_call(name: str) -> None:
    f = _fault
    f.counts[name] = f.counts.get(name, 0) + 1
    if f.n and f.marker is not None and name == f.point and f.counts[name] == f.n:
        f.marker.write_text("fired")
        # To the main thread, where Python's handler runs: sent to the process, it could
        # be taken by another thread (SQLAlchemy's, MLflow's) a moment later.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)


def _patch_points(points: tuple[str, ...]) -> None:
    for name in dict.fromkeys(points):
        if name not in _fault.patched:
            _patch(name, _on_call)
            _fault.patched.add(name)


def arm(point: str, n: int, marker: Path) -> None:
    """Patch every point of :data:`POINTS` (and ``point``) to count calls; kill at ``n``.

    In a zygote's child the points of :data:`POINTS` are patched already (and counted
    nothing: the counts start here); a ``point`` not among them is patched now.
    """
    _fault.point, _fault.n, _fault.marker, _fault.counts = point, n, marker, {}
    _patch_points((*POINTS, point))
    if not n:
        counts = _fault.counts
        atexit.register(lambda: marker.write_text(json.dumps(counts, indent=1)))


def slow(point: str, seconds: float) -> None:
    """Make every call of ``point`` wait ``seconds`` before it runs."""
    import time

    _patch(point, lambda _: time.sleep(seconds))


#: What a job imports after the entry point starts (its lazy imports), 1-1.5 s of every
#: ``--kill`` process: the zygote imports them too, after the points are patched, as a
#: ``--kill`` process does. Libraries and the runner's modules only: none runs anything at
#: import, and none holds a reference to a point that could differ.
PRELOADS = (
    "runner.app",
    "runner.interrupts",
    "runner.shutdown",
    "runner.tracking.callback",
    "runner.tracking.inputs",
    "runner.tracking.summary",
    "runner.figures",
    "runner.sweeps.optuna._core",
    "hydra_plugins.runner_optuna_sweeper.optuna_sweeper",
    "hydra_plugins.runner_grid_sweeper.grid_sweeper",
    "mlflow.store.tracking.sqlalchemy_store",
    "sklearn.datasets",
    "sklearn.pipeline",
)

#: What the zygote sets for itself so that it has one thread to fork from: numpy's and
#: scipy's OpenBLAS start a worker thread each as they load, pyarrow's jemalloc (pandas
#: imports pyarrow) a background thread. Each child gets the environment back as it was,
#: and OpenBLAS the threads a fresh process starts with; jemalloc's background thread
#: only returns memory to the OS, which no moment depends on.
_ZYGOTE_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _receive() -> dict[str, Any] | None:
    # Unbuffered, byte by byte: nothing read ahead is left in a buffer a child inherits.
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return None
        line += byte
    request: dict[str, Any] = json.loads(line)
    return request


def _unsafe_to_fork() -> list[str]:
    """What makes this process unsafe to fork: other threads, database connections, sockets."""
    import sqlite3
    import stat

    problems = [f"Python thread {t.name}" for t in threading.enumerate()]
    problems.remove(f"Python thread {threading.main_thread().name}")
    tasks = sorted(os.listdir("/proc/self/task"))
    if len(tasks) != 1:
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in tasks]
        problems.append(f"{len(tasks)} OS threads: {names}")
    connections = [o for o in gc.get_objects() if isinstance(o, sqlite3.Connection)]
    if connections:
        problems.append(f"{len(connections)} open SQLite connection(s)")
    for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
        try:
            mode = os.fstat(fd).st_mode
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if stat.S_ISSOCK(mode) or (fd > 2 and stat.S_ISREG(mode)):
            problems.append(f"fd {fd} open on {target}")
    return problems


def zygote() -> list[str] | None:
    """Fork one ``--kill`` process per request (see the module docstring).

    Returns:
        In a child: the ``--kill`` command line it is to run (``sys.argv[1:]``). In the
        zygote: None, once its stdin has ended.
    """
    saved = {k: os.environ.get(k) for k in _ZYGOTE_ENV}
    os.environ.update(_ZYGOTE_ENV)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # What a --kill process imports, in its order: the points (each patched as soon as its
    # module is imported), then the entry point, then what the job imports.
    _patch_points(POINTS)
    import runner.__main__  # noqa: F401

    for module in PRELOADS:
        importlib.import_module(module)

    problems = _unsafe_to_fork()
    if problems:
        raise SystemExit("faults.py --zygote: not safe to fork: " + "; ".join(problems))
    _send({"ready": os.getpid()})
    while (request := _receive()) is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return _child(request, saved)
        _send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
    # Nothing of the zygote's is left to collect: skip the shutdown's garbage collection.
    gc.freeze()
    return None


def _child(request: dict[str, Any], saved: dict[str, str | None]) -> list[str]:
    """Make this forked child the process ``request`` asks for; its ``--kill`` argv."""
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # OpenBLAS's threads as a fresh process starts with: the variable's, or one per core
    # (the zygote had one).
    from threadpoolctl import threadpool_limits

    blas = saved["OPENBLAS_NUM_THREADS"]
    threads = int(blas) if blas and blas.isdigit() else len(os.sched_getaffinity(0))
    threadpool_limits(limits=threads, user_api="blas")
    if "numpy" in sys.modules:
        # Python's `random` reseeds itself in a forked child; numpy's global state does not,
        # and a fresh process would have drawn its own.
        sys.modules["numpy"].random.seed()
    point, n, marker = request["point"], str(request["n"]), request["marker"]
    return ["--kill", point, n, marker, "--", *request["args"]]


def main() -> None:
    """Arm the fault, then run the runner's entry point with the arguments after ``--``.

    With ``--zygote``, each forked child takes this way with its request's arguments.
    """
    argv = sys.argv[1:]
    if argv == ["--zygote"]:
        child = zygote()
        if child is None:
            return
        argv = child
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
        raise SystemExit(
            "usage: faults.py --kill POINT N MARKER | --slow POINT SECONDS -- ARGS | --zygote"
        )
    from runner.__main__ import main as runner_main

    sys.argv = [sys.argv[0], *args]
    runner_main()


if __name__ == "__main__":
    main()


# -- a second signal -------------------------------------------------------------------------
#
#     python -c "import faults; faults.main_twice()" --kill-twice POINT N CALLS MARKER -- ARGS...
#
# (run with ``tests/`` on ``PYTHONPATH``: :func:`main` above does not know the option)
# ``--kill`` at ``POINT``'s ``N``-th call, then a second SIGTERM ``CALLS`` Python function
# calls later (counted with :func:`sys.setprofile` in the main thread, from the first signal
# on): "a second signal means now" (runner.interrupts) lands at the same bytecode on every
# run, e.g. inside an import that the first signal, held, did not stop. ``MARKER`` receives
# ``fired`` at the first signal and ``fired twice`` at the second.


def _arm_second(calls: int, marker: Path) -> None:
    left = [calls]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        left[0] -= 1
        if left[0] == 0:
            sys.setprofile(None)
            marker.write_text("fired twice")
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    sys.setprofile(profile)


def kill_twice(point: str, n: int, calls: int, marker: Path) -> None:
    """Arm ``--kill-twice`` (see above): :func:`arm`, and the second signal after it."""
    first = _on_call

    def on_call(name: str) -> None:
        fires = _fault.n and name == _fault.point and _fault.counts.get(name, 0) + 1 == _fault.n
        first(name)
        if fires:
            _arm_second(calls, marker)

    # Before arm(): the points are patched with the module's _on_call as it is then.
    globals()["_on_call"] = on_call
    arm(point, n, marker)


def main_twice() -> None:
    """``--kill-twice``: arm both signals, then run the runner's entry point."""
    argv = sys.argv[1:]
    sep = argv.index("--")
    opts, args = argv[:sep], argv[sep + 1 :]
    point, n, calls, marker = opts[1:]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    kill_twice(point, int(n), int(calls), Path(marker))
    from runner.__main__ import main as runner_main

    sys.argv = [sys.argv[0], *args]
    runner_main()
