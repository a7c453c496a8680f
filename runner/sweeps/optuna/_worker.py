"""Running one trial's Hydra job: in the sweep's process, or in a worker process.

``n_jobs > 1`` uses a pool of worker processes (spawned, so no SQLite connection, thread or
lock of the sweep process is inherited) that each run whole Hydra jobs with
:func:`runner.sweeps.hydra_job.run_job` (Hydra's ``run_job`` with fewer copies), as Hydra's joblib
launcher does. Hydra's launcher API launches batches and returns when the whole batch is
done; running jobs one by one from a pool lets a new trial start as soon as any slot frees.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
from typing import Any

from runner.interrupts import install
from runner.shutdown import quick_exit
from runner.trial import Outcome, TrialHandle, activate, outcome

__all__ = ["init_worker", "run_trial", "run_trial_payload", "warm"]

log = logging.getLogger(__name__)


def init_worker() -> None:
    """Worker set-up: Ctrl-C is the sweep process's to handle; SIGTERM ends the job KILLED.

    SIGTERM is cooperative (:func:`runner.interrupts.install`): it stops the job's task at
    once and otherwise waits until the worker's store and storage calls are done.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install()
    # A spawned worker ends with a full interpreter shutdown; the sweep waits for it.
    quick_exit()


def warm(modules: list[str]) -> int:
    """Import the job's heavy modules once per worker, before the first trial is timed."""
    import os

    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return os.getpid()


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
            # the session imports no MLflow: nothing to end when tracking is off.)
            from runner.tracking.session import close_job_run

            close_job_run("KILLED")
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
            context, the task function and Hydra's singletons. Restoring the singletons
            re-discovers Hydra's plugins (about 80 ms here), so a worker does it once.
        payload: The trial's part: its job config and its :class:`runner.trial.TrialRef`.
    """
    global _sweep
    import cloudpickle

    if sweep != _sweep[0]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        hydra_context, task_function, singletons = cloudpickle.loads(sweep)
        Singleton.set_state(singletons)
        setup_globals()
        _sweep = (sweep, (hydra_context, task_function))
    hydra_context, task_function = _sweep[1]
    config, ref = cloudpickle.loads(payload)
    try:
        return run_trial(
            hydra_context=hydra_context,
            task_function=task_function,
            config=config,
            handle=TrialHandle(ref),
        )
    except KeyboardInterrupt:
        return Outcome("KILLED", error="interrupted")
