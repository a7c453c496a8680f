"""Running one trial's Hydra job: in the sweep's process, or in a worker process.

``n_jobs > 1`` uses a pool of worker processes that each run whole Hydra jobs with
:func:`runner.sweeps.hydra_job.run_job` (Hydra's ``run_job`` with fewer copies), as Hydra's joblib
launcher does. Hydra's launcher API launches batches and returns when the whole batch is
done; running jobs one by one from a pool lets a new trial start as soon as any slot frees.

The workers are forked from a forkserver (:func:`start_forkserver`) that has imported what a
job needs once: spawned workers each paid Python, Hydra, scikit-learn and MLflow imports (2-3 s
here) before their first trial, which made ``n_jobs=2`` slower than ``n_jobs=1`` on short
trials. The server is a fresh interpreter (fork + exec of the sweep's executable), not a fork
of the sweep process, so, as with spawn, no SQLite connection, thread or lock of the sweep
process is inherited by a worker.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import multiprocessing
import signal
import sys
import types
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from runner import threads
from runner.interrupts import install, pending
from runner.trial import Outcome, TrialHandle, activate, outcome

__all__ = [
    "TaskRef",
    "import_quietly",
    "init_worker",
    "resolve_task",
    "run_trial",
    "run_trial_payload",
    "start_forkserver",
    "task_ref",
]

log = logging.getLogger(__name__)

#: Whether the worker is running a trial (:func:`run_trial_payload`).
_busy = False


#: Blocked while the forkserver starts, unblocked by each worker once its handlers are set.
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_forkserver(modules: Sequence[str]) -> multiprocessing.context.BaseContext:
    """The multiprocessing context of the workers: a forkserver that imports ``modules``.

    Starting the server returns at once; it imports ``modules`` (what every trial needs, and
    never the user's own modules: an exception other than ImportError would end the server)
    while the sweep opens its study, and each worker is then a fork of it, ready in
    milliseconds. The server is started once per sweep process: a later pool reuses it with
    its first preloads.

    SIGINT and SIGTERM are blocked while the server starts, so that it and the workers
    forked from it inherit them blocked (as CPython's resource tracker does for itself,
    bpo-33613): a ``kill -- -PGID`` or Ctrl-C sent to the sweep's process group never ends
    the server (which would make the pool see every worker as dead and fail their trials),
    and reaches a worker only once :func:`init_worker` has set its handlers.
    """
    from multiprocessing import forkserver, resource_tracker

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["runner.sweeps.optuna._forkserver", __name__, *modules])
    # Started first: its own start unblocks both signals (SIG_UNBLOCK, not the old mask).
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return ctx


def init_worker(modules: Sequence[str] = (), workers: int = 1) -> None:
    """Worker set-up: Ctrl-C is the sweep process's to handle; SIGTERM ends the job KILLED.

    SIGTERM is cooperative (:func:`runner.interrupts.install`): it stops the job's task at
    once and otherwise waits until the worker's store and storage calls are done. Outside a
    trial (waiting in the pool's queue) a signal is only recorded, even a second one: that
    is the sweep's own SIGTERM (``OptunaSweep._stop_workers``) after a signal sent to the
    whole process group (``kill -- -PGID``, a batch scheduler), and raising it there
    printed a ``KeyboardInterrupt: signal 15`` traceback from the pool's loop. The sweep
    process reports the interruption; the worker exits quietly when the pool shuts down.

    Args:
        modules: Imported here, in each worker, after the handlers are set: the job's own
            model and dataset modules, which the forkserver does not preload (an import
            error is the first trial's to report).
        workers: The pool's size: each worker's native thread pools get their share of
            the cores (:func:`runner.threads.limit`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install()
    runner_handler = signal.getsignal(signal.SIGTERM)
    assert callable(runner_handler)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if _busy or pending() is None:
            runner_handler(signum, frame)
        # else: idle with a signal already recorded; the next trial is KILLED at its start.

    signal.signal(signal.SIGTERM, on_signal)
    # Blocked since the forkserver started (start_forkserver): a signal sent meanwhile is
    # delivered now, to the handlers above (a SIGINT is dropped: it is ignored).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    threads.limit(workers)
    # No runner.shutdown.quick_exit: a forked worker ends with os._exit (the forkserver's
    # child), without the interpreter's shutdown collection a spawned one paid.
    # Not a _call(): a signal here waits (an import cut in half leaves a module that the
    # worker's next trial fails on).
    import_quietly(modules)


def import_quietly(modules: Sequence[str]) -> None:
    """Import ``modules`` ahead of the trials, best effort: a module that fails here (the
    user's may raise anything) fails again in its trial, which reports it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            log.debug("not imported ahead: %s (%s)", name, e)


@contextlib.contextmanager
def _call() -> Any:
    global _busy
    _busy = True
    try:
        yield
    finally:
        _busy = False


#: Where a worker imports the task function from: the main module's import name (None: the
#: script, which a spawned worker runs as ``__mp_main__``) and the function's qualname.
TaskRef = tuple[str | None, str]


def task_ref(task_function: Callable[..., Any]) -> TaskRef | None:
    """The task function by reference, when it is defined in the sweep's ``__main__``.

    cloudpickle pickles a function of ``__main__`` by value and names its code
    ``<dynamic-code>`` (cloudpickle's ``_code_reduce``): the traceback of a failed trial
    then showed ``File "<dynamic-code>"`` instead of the user's file and line. A worker
    imports the function instead (``@hydra.main``'s wrapper holds it as ``__wrapped__``).
    None where it cannot be found that way (a function defined inside another).
    """
    main = sys.modules.get("__main__")
    qualname = getattr(task_function, "__qualname__", "")
    if getattr(task_function, "__module__", None) != "__main__" or main is None:
        return None
    if "<locals>" in qualname or _lookup(main, qualname) is not task_function:
        return None
    spec = getattr(main, "__spec__", None)
    return (spec.name if spec is not None else None, qualname)


def _lookup(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    try:
        return inspect.unwrap(obj) if callable(obj) else None
    except ValueError:  # a __wrapped__ cycle
        return None


def resolve_task(ref: TaskRef | None, by_value: Any, filename: str | None) -> Any:
    """The task function in a worker: imported by ``ref``, else the pickled copy."""
    if ref is not None:
        name, qualname = ref
        try:
            module = importlib.import_module(name) if name else sys.modules["__main__"]
            found = _lookup(module, qualname)
        except Exception as e:  # the pickled copy still runs; only its frames are unnamed
            log.debug("task function %s not importable in the worker: %s", qualname, e)
            found = None
        if found is not None:
            return found
    if filename and isinstance(by_value, types.FunctionType):
        by_value.__code__ = _named(by_value.__code__, filename)
    return by_value


def _named(code: types.CodeType, filename: str) -> types.CodeType:
    """``code`` (and the code nested in it) with its file name restored."""
    consts = tuple(
        _named(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def run_trial(
    *,
    hydra_context: Any,
    task_function: Any,
    config: Any,
    handle: TrialHandle,
) -> Outcome:
    """Run the job of one trial and classify how it ended.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; the job's run was ended KILLED.
    """
    from hydra.core.utils import JobStatus

    from runner.sweeps.hydra_job import run_job

    with activate(handle):
        try:
            ret = run_job(
                hydra_context=hydra_context,
                task_function=task_function,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        except KeyboardInterrupt:
            # run_job catches Exception only: on_job_end never ran for this job. (Importing
            # the session imports no MLflow: nothing to end when tracking is off.) The
            # interrupt is re-raised whatever the clean-up meets: a KeyboardInterrupt that
            # cut a first `import mlflow` in half leaves a module whose next import raises,
            # and that error replacing the interrupt made the pool record the trial FAIL
            # ("the trial's worker died") instead of KILLED.
            try:
                from runner.tracking.session import close_job_run

                close_job_run("KILLED")
            except Exception:
                log.exception("trial %d: its run could not be ended KILLED", handle.number)
            raise
    ok = ret.status == JobStatus.COMPLETED
    result = outcome(ok, ret._return_value, len(handle.ref.directions))
    if result.state == "FAIL" and isinstance(ret._return_value, BaseException):
        # What Hydra logs for a failed job (its JobReturn would also say it for a pruned
        # one, which is no error): the overrides and the traceback.
        log.error(
            "trial %d failed; job overrides: %s",
            handle.number,
            list(ret.overrides or []),
            exc_info=ret._return_value,
        )
    return result


#: The sweep-wide part of the last payload, as received and as loaded (see run_trial_payload).
_sweep: tuple[bytes, Any] = (b"", None)


def run_trial_payload(sweep: bytes, payload: bytes) -> Outcome:
    """Worker entry: unpickle (cloudpickle) the job, run it, return its outcome.

    Args:
        sweep: The sweep-wide part, the same bytes for every trial of a sweep: Hydra's
            context, the task function (a :data:`TaskRef`, the function pickled and its
            file name) and Hydra's singletons. Restoring the singletons re-discovers
            Hydra's plugins (about 80 ms here), so a worker does it once.
        payload: The trial's part: its job config and its :class:`runner.trial.TrialRef`.
    """
    global _sweep
    import cloudpickle

    with _call():
        try:
            if sweep != _sweep[0]:
                from hydra.core.singleton import Singleton
                from hydra.core.utils import setup_globals

                hydra_context, (ref, by_value, filename), singletons = cloudpickle.loads(sweep)
                Singleton.set_state(singletons)
                setup_globals()
                task_function = resolve_task(ref, by_value, filename)
                _sweep = (sweep, (hydra_context, task_function))
            hydra_context, task_function = _sweep[1]
            config, trial = cloudpickle.loads(payload)
            return run_trial(
                hydra_context=hydra_context,
                task_function=task_function,
                config=config,
                handle=TrialHandle(trial),
            )
        except KeyboardInterrupt:
            return Outcome("KILLED", error="interrupted")
