"""The Ray launcher's work: connect to the cluster, run the batch as remote tasks, collect.

Ray is imported here only, when a batch is launched (the runner imports no heavy optional
dependency at import time).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from runner.errors import ConfigError, RunnerError
from runner.interrupts import checkpoint, held

if TYPE_CHECKING:
    from hydra_plugins.runner_ray_launcher.ray_launcher import RayLauncher

log = logging.getLogger(__name__)

#: How long the address check waits for the head node's port to accept a connection.
CONNECT_TIMEOUT_S = 10.0
#: How often the wait for a batch looks for a signal to act on.
_POLL_S = 0.5
#: How long an interrupted batch waits for its cancelled jobs to end their runs (default of
#: ``hydra.launcher.cancel_wait_s``).
_CANCEL_WAIT_S = 10.0
#: How long a force-cancel waits for Ray to report the killed workers' tasks ended.
_KILL_WAIT_S = 30.0
#: Ray Client's default port (``ray://host`` without one).
_RAY_CLIENT_PORT = 10001

#: The threads other than the main one waiting for a batch (the Optuna sweeper's launch),
#: with the cancel wait of each one's launcher.
_waiting: dict[threading.Thread, float] = {}
_waiting_lock = threading.Lock()
_exit_hook = False


class _StopWaiting(BaseException):
    """A thread other than the main one waits for its batch, and the process is exiting or
    the batch was cancelled (:meth:`RayLauncher.cancel`): cancel the batch's jobs."""


_FIX = (
    "start one there (`ray start --head --port=<port>`), correct hydra.launcher.address, "
    "or set hydra.launcher.address=null to start a local cluster in this process"
)


class JobLost(RunnerError):
    """A job's Ray task ended without a return: its worker died, or Ray failed to run it."""


def _import_ray() -> Any:
    if threading.current_thread() is not threading.main_thread():
        # ray.init installs Ray's failure-signal handlers (SIGTERM included) in this
        # process, and only the main thread can put the runner's SIGTERM handler back
        # (connect): off the main thread (the Optuna sweeper's launch) a SIGTERM then went
        # through Ray's handler and the process ended with SIGABRT (exit status -6), not
        # 130. Read by ray._private.ray_constants when Ray is first imported.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            f"hydra/launcher=ray needs Ray, which is not installed ({e}). Fix: "
            "pip install 'hydra-mlflow-runner[ray]' (or pip install 'ray==2.60.0'), or choose "
            "another launcher (hydra/launcher=joblib, submitit_local, slurm)."
        ) from e
    return ray


def _check_reachable(address: str) -> None:
    """Refuse, within seconds, an address where nothing listens (ray.init would retry)."""
    if address == "auto":
        return  # the cluster `ray start` left a record of on this machine; ray.init checks
    split = urlsplit(address if "://" in address else f"gcs://{address}")
    default = _RAY_CLIENT_PORT if split.scheme == "ray" else None
    try:
        host, port = split.hostname, split.port or default
    except ValueError as e:  # a port that is not a number
        raise ConfigError(f"hydra.launcher.address={address} is not host:port ({e})") from e
    if not host or port is None:
        raise ConfigError(
            f"hydra.launcher.address={address} is not a Ray address: use null (a local "
            "cluster), auto, host:port (the head node's GCS port) or ray://host:port."
        )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConfigError(
            f"No Ray cluster answers at hydra.launcher.address={address} ({e}): {_FIX}."
        ) from e


def connect(ray: Any, address: str | None, init: dict[str, Any]) -> None:
    """``ray.init`` once per process: attach to ``address``, or start a local cluster."""
    if ray.is_initialized():
        return
    kwargs = dict(init)
    if address is None:
        # A local cluster for this sweep: a dashboard would only cost a process and a port.
        kwargs.setdefault("include_dashboard", False)
    else:
        _check_reachable(address)
        kwargs["address"] = address
    # ray.init makes SIGTERM a sys.exit wherever it lands, and its core worker installs
    # failure-signal handlers (ray/_private/worker.py, init: "terminate any signal before
    # connecting driver"): keep this process's own, the runner's cooperative SIGTERM that
    # ends the runs KILLED at a safe point (runner.interrupts).
    handlers = _signal_handlers()
    try:
        info = ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TypeError) as e:
        where = f"hydra.launcher.address={address}" if address else "a local Ray cluster"
        raise ConfigError(
            f"Ray could not start or connect to {where} with hydra.launcher.init={init}: "
            f"{e}. Fix: {_FIX}."
        ) from e
    finally:
        _restore(handlers)
    global _exit_hook
    if not _exit_hook:
        # After ray.init, so it runs before Ray's own exit hook (atexit is last in, first
        # out), which disconnects the driver and so kills its tasks with their runs
        # RUNNING. It matters where the batch is waited for in a thread of its own (the
        # Optuna sweeper's workers): the main thread's interrupt never reaches that wait.
        atexit.register(_join_waiting)
        _exit_hook = True
    log.info(f"Ray: connected to {getattr(info, 'address_info', {}).get('address', address)}")


def _signal_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: not set from Python; nothing to put back
            signal.signal(signum, handler)


@contextlib.contextmanager
def _cancel_reaches_the_job() -> Iterator[None]:
    """SIGINT unblocked for the job, so that ``ray.cancel``'s interrupt is never lost.

    ``ray.cancel`` interrupts a running task with ``_thread.interrupt_main()``
    (``kill_main_task`` in ray/_raylet.pyx): the SIGINT handler runs as if the signal had
    come. Where the job is inside a store call, the runner holds that interrupt back
    (``runner.interrupts.held`` swaps the handler for the call) and delivers it after the
    call with ``signal.raise_signal``, a real SIGINT. But Ray starts its processes with
    SIGINT blocked (``pthread_sigmask`` in the ``preexec_fn`` of
    ray/_private/services.py's ``start_ray_process``; workers inherit the raylet's mask),
    so that SIGINT stayed pending for ever: the job ran on and the force-cancel killed
    it with its run RUNNING. Unblocked for the job, it raises ``KeyboardInterrupt``
    right after the store call, and :func:`execute_job` ends the run KILLED.

    And ``interrupt_main`` does nothing where Python does not handle SIGINT (SIG_IGN or
    SIG_DFL: the Python docs of ``_thread.interrupt_main``). A cluster started with SIGINT
    ignored (``nohup ray start``, a service, a background job of a script; CI's suite) passes
    that on to every worker: the cancel was lost, each job ran on, and an Optuna trial that
    ended within the cancel wait was told COMPLETE after Ctrl-C (a CI failure of
    tests/launchers/test_optuna_launchers.py::test_ctrl_c_mid_trial_leaves_nothing_running).
    So the job runs with Python's own SIGINT handler, as in a cluster started from a
    terminal; the worker's disposition comes back after it.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    # A SIGINT left pending by a cancel that came as an earlier job of this (reused)
    # worker was ending: not this job's to act on.
    while signal.SIGINT in signal.sigpending():
        signal.sigtimedwait([signal.SIGINT], 0)
    handler = signal.getsignal(signal.SIGINT)
    unhandled = handler in (signal.SIG_IGN, signal.SIG_DFL)
    if unhandled:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        if signal.SIGINT in blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        if unhandled:
            signal.signal(signal.SIGINT, handler)


def execute_job(
    shared: tuple[HydraContext, DictConfig, TaskFunction, dict[Any, Any], str],
    idx: int,
    overrides: Sequence[str],
) -> JobReturn:
    """One job on a Ray worker: Hydra's ``run_job``, as the joblib launcher's ``execute_job``.

    Ray reuses its worker processes, so the Hydra globals are set again for every job, and
    the working directory is restored afterwards.
    """
    hydra_context, config, task_function, singleton_state, launch_dir = shared
    setup_globals()
    Singleton.set_state(singleton_state)
    cwd = os.getcwd()
    # Relative paths (hydra.sweep.dir, a sqlite:/// store) mean the launching directory, as
    # under Hydra's other launchers; on a node without it, give absolute (shared) paths.
    if Path(launch_dir).is_dir():
        os.chdir(launch_dir)
    try:
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        with _cancel_reaches_the_job():
            return run_job(
                hydra_context=hydra_context,
                config=sweep_config,
                task_function=task_function,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
    except KeyboardInterrupt:
        # The batch was cancelled (ray.cancel raises this in a running task): Hydra's run_job
        # lets it through without on_job_end, so end the job's run KILLED here, as the
        # Optuna sweeper does for an interrupted trial.
        from runner.tracking.session import close_job_run

        # Not cut short by a further interrupt (the clean-up on the way out, as
        # runner.tracking.session.close_open_runs): the run must end.
        with held(drop=True):
            close_job_run("KILLED")
        raise
    finally:
        os.chdir(cwd)


def _lost(ray: Any, overrides: Sequence[str], error: BaseException) -> JobReturn:
    """The failed return of a job whose task raised in Ray, not in the job (``run_job``
    reports the job's own errors in its return)."""
    cause = error
    if isinstance(error, ray.exceptions.RayTaskError):
        # An error in execute_job outside run_job (the job's config, say): the original.
        cause = error.as_instanceof_cause()
    lost = JobLost(f"job {' '.join(overrides)} did not return from Ray: {cause}")
    lost.__cause__ = error
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=lost)


def _cancel(ray: Any, refs: list[Any], wait_s: float) -> None:
    """Cancel ``refs``: first not forced, then forced for those still running after a wait.

    Not forced, Ray raises ``KeyboardInterrupt`` in a running job (between bytecodes), which
    then ends its run KILLED (:func:`execute_job`); forced, the worker is killed (SIGKILL),
    and nothing of the job's ends its run: :func:`_close_left_running` does, afterwards.
    With ``wait_s`` 0 every job is force-cancelled at once.
    Returns once every task has ended, or after a bounded wait for Ray to say so.
    """
    if not refs:
        return
    remaining = refs
    if wait_s > 0:  # 0: no time to end their runs, force-cancelled at once
        for ref in refs:
            ray.cancel(ref)
        _, remaining = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    if not remaining:
        return
    when = f"still running {wait_s:g} s after the cancel" if wait_s > 0 else "running"
    log.warning(
        f"Ray: {len(remaining)} job(s) {when} were force-cancelled (their workers killed); "
        "this process ends the runs they left RUNNING as KILLED"
    )
    for ref in remaining:
        ray.cancel(ref, force=True)
    # A force-cancel is a request too: the runs are closed once the workers are gone, so
    # that no job writes to its run after it was ended.
    _, alive = ray.wait(remaining, num_returns=len(remaining), timeout=_KILL_WAIT_S)
    if alive:
        log.warning(f"Ray: {len(alive)} force-cancelled job(s) not reported ended by Ray")


def _close_left_running(launcher: RayLauncher, job_nums: list[int], started_ms: int) -> None:
    """End KILLED the runs the cancelled jobs ``job_nums`` left RUNNING (tagged why).

    The jobs end their own runs when the cancel's interrupt reaches them in time, but that
    is Ray's best effort: the interrupt is raised only between bytecodes of the job's main
    thread (not inside a long C call: a ``fit``, a SQLite lock wait), a run being ended
    then still takes store calls on a loaded machine, and whatever is not done when the
    force-cancel comes (or the driver disconnects, which kills its tasks) is cut off with
    its run RUNNING. Closed here, by the launching process, once the jobs are gone, the
    sweep's runs end KILLED whatever the timing (as a dead trial's run is closed by the
    surviving worker, runner.tracking.trials).
    """
    assert launcher.config is not None
    if not job_nums or not _tracked(launcher.config):
        return
    from runner.tracking.session import launch_dir
    from runner.tracking.trials import close_launched_jobs

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(launch_dir(launcher.config)) / sweep_dir
    why = (
        f"ended KILLED by the process that launched it on Ray ({socket.gethostname()}:"
        f"{os.getpid()}): the sweep was interrupted and the job's Ray task cancelled "
        "before the job ended its run"
    )
    # Not cut short by a second Ctrl-C: the runs must end (runner.interrupts).
    with held(drop=True):
        closed = close_launched_jobs(sweep_dir, job_nums, why, started_after_ms=started_ms)
    if closed:
        log.info(f"Ray: ended {closed} run(s) the cancelled jobs left RUNNING as KILLED")


def _tracked(config: DictConfig) -> bool:
    from runner.tracking.session import enabled

    try:
        return enabled(config)
    except RunnerError:
        return False


def _join_waiting() -> None:
    """At exit: let the threads still waiting for a batch cancel it and collect it.

    The exit hook of :func:`connect`. Each such thread sees the main thread ended and
    cancels its batch itself (:func:`launch`): a Ray call from here beside theirs aborted
    the process (exit status -6), and so would Ray's own exit hook with one of theirs.
    """
    with _waiting_lock:
        waiting = dict(_waiting)
    for thread, wait_s in waiting.items():
        # The cancel's waits, then the closing of what the jobs left RUNNING.
        thread.join(timeout=wait_s + _KILL_WAIT_S + 2 * _POLL_S + 30)


def launch(
    *,
    launcher: RayLauncher,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> Sequence[JobReturn]:
    """Run a batch as Ray tasks at once; their returns in the order of ``job_overrides``."""
    setup_globals()
    assert launcher.config is not None
    assert launcher.task_function is not None
    assert launcher.hydra_context is not None
    ray = _import_ray()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    connect(ray, launcher.address, launcher.init)

    options = ", ".join(f"{k}={v}" for k, v in launcher.task_options.items())
    log.info(f"Ray ({options}) is launching {len(job_overrides)} jobs")
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")

    # Put once, shared by every task of the batch (Ray resolves a top-level ObjectRef).
    shared = ray.put(
        (
            launcher.hydra_context,
            launcher.config,
            launcher.task_function,
            Singleton.get_state(),
            os.getcwd(),
        )
    )
    task = ray.remote(execute_job).options(**launcher.task_options)
    # A minute early: a job's run start time is its node's clock, not this machine's.
    started_ms = int(time.time() * 1000) - 60_000
    refs = [
        task.remote(shared, idx, list(overrides))
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx)
    ]
    order = {ref: i for i, ref in enumerate(refs)}
    runs: dict[int, JobReturn] = {}
    remaining = list(refs)
    this = threading.current_thread()
    main = threading.main_thread()
    if this is not main:
        with _waiting_lock:
            _waiting[this] = launcher.cancel_wait_s
    try:
        while remaining:
            # The runner holds SIGINT/SIGTERM until a safe point (runner.interrupts): waiting
            # here is one, so Ctrl-C stops the sweep within a poll, not after the batch.
            checkpoint()
            if this is not main and (not main.is_alive() or launcher.cancelled.is_set()):
                # Waiting in a thread of its own (the Optuna sweeper's launch), which the
                # main thread's interrupt never reaches: the sweep was interrupted
                # (RayLauncher.cancel), or the process is exiting (Python marks the main
                # thread ended before the exit hooks run), and Ray's own exit hook would
                # disconnect the driver, killing the jobs mid-run.
                raise _StopWaiting
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=_POLL_S)
            for ref in ready:
                overrides = job_overrides[order[ref]]
                try:
                    runs[order[ref]] = ray.get(ref)
                except ray.exceptions.TaskCancelledError as e:
                    # Cancelled (the process exiting): the job ended its run KILLED.
                    log.info(f"Ray job {' '.join(overrides)} was cancelled")
                    runs[order[ref]] = _lost(ray, overrides, e)
                except ray.exceptions.RayError as e:
                    log.error(f"Ray job {' '.join(overrides)} failed in Ray: {e}")
                    runs[order[ref]] = _lost(ray, overrides, e)
    except BaseException:
        # Interrupted: no job left running on the cluster, and none of their runs RUNNING.
        nums = [initial_job_idx + order[ref] for ref in remaining]
        try:
            _cancel(ray, remaining, launcher.cancel_wait_s)
        finally:  # also after a second Ctrl-C cut the cancel's waits short
            _close_left_running(launcher, nums, started_ms)
        raise
    finally:
        with _waiting_lock:
            _waiting.pop(this, None)
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return [runs[i] for i in range(len(refs))]
