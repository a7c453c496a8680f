"""The Ray launcher's work: connect to the cluster, run the batch as remote tasks, collect.

Ray is imported here only, when a batch is launched (the runner imports no heavy optional
dependency at import time).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
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
from runner.interrupts import checkpoint

if TYPE_CHECKING:
    from hydra_plugins.runner_ray_launcher.ray_launcher import RayLauncher

log = logging.getLogger(__name__)

#: How long the address check waits for the head node's port to accept a connection.
CONNECT_TIMEOUT_S = 10.0
#: How often the wait for a batch looks for a signal to act on.
_POLL_S = 0.5
#: How long an interrupted batch waits for its cancelled jobs to end their runs.
_CANCEL_WAIT_S = 10.0
#: Ray Client's default port (``ray://host`` without one).
_RAY_CLIENT_PORT = 10001

_FIX = (
    "start one there (`ray start --head --port=<port>`), correct hydra.launcher.address, "
    "or set hydra.launcher.address=null to start a local cluster in this process"
)


class JobLost(RunnerError):
    """A job's Ray task ended without a return: its worker died, or Ray failed to run it."""


def _import_ray() -> Any:
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
    log.info(f"Ray: connected to {getattr(info, 'address_info', {}).get('address', address)}")


def _signal_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: not set from Python; nothing to put back
            signal.signal(signum, handler)


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
    refs = [
        task.remote(shared, idx, list(overrides))
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx)
    ]
    order = {ref: i for i, ref in enumerate(refs)}
    runs: dict[int, JobReturn] = {}
    remaining = list(refs)
    try:
        while remaining:
            # The runner holds SIGINT/SIGTERM until a safe point (runner.interrupts): waiting
            # here is one, so Ctrl-C stops the sweep within a poll, not after the batch.
            checkpoint()
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=_POLL_S)
            for ref in ready:
                overrides = job_overrides[order[ref]]
                try:
                    runs[order[ref]] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    log.error(f"Ray job {' '.join(overrides)} failed in Ray: {e}")
                    runs[order[ref]] = _lost(ray, overrides, e)
    except BaseException:
        # Interrupted: no job left running on the cluster. First not forced: Ray raises
        # KeyboardInterrupt in a running job (between bytecodes), which then ends its run
        # KILLED; then forced (the worker killed) for a job still running after the wait.
        if remaining:
            for ref in remaining:
                ray.cancel(ref)
            _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=_CANCEL_WAIT_S)
            for ref in remaining:
                ray.cancel(ref, force=True)
        raise
    finally:
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return [runs[i] for i in range(len(refs))]
