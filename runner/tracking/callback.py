"""The Hydra callback that logs every job to MLflow.

Configured under ``hydra.callbacks.mlflow`` in conf/config.yaml. One run per job; in a
multirun, one parent run per sweep (per experiment) created before the jobs start, and every
job's run nested under it with MLflow's ``mlflow.parentRunId`` tag.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import contract, interrupts
from runner import trial as trial_mod
from runner.config import register
from runner.errors import RunnerError
from runner.tracking.job import JobRun, NullRun
from runner.tracking.parents import SELF_MANAGED_SWEEPERS, SweepParents
from runner.tracking.redact import (
    install_log_redaction,
    redact_exception,
    redact_job_dirname,
    redact_override,
)
from runner.tracking.runs import (
    as_runner_error,
    create_parent,
    logged_overrides,
    redact_hydra_files,
    start_job,
    sweep_dir_of,
)
from runner.tracking.session import (
    Sweep,
    close_open_runs,
    enabled,
    redact_on_exit,
    state,
    store_for,
    uri_of,
)

__all__ = ["MLflowCallback"]

log = logging.getLogger(__name__)


class MLflowCallback(Callback):
    """Log each Hydra job as an MLflow run; nest a sweep's jobs under a parent run."""

    def __init__(self, **_: Any) -> None:
        # Hydra sends a job's log lines to a file in its output dir too.
        install_log_redaction()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Redact ``hydra.job.override_dirname`` before Hydra makes the job's output dir."""
        redact_job_dirname(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the sweep's parent run before any job starts."""
        register()
        state.sweep = None
        # Before the sweeper writes multirun.yaml (and makes the sweep dir, which may name
        # the dirname); that file is redacted on every way out, a sweep that fails before
        # its first job included.
        redact_job_dirname(config)
        try:
            redact_on_exit(sweep_dir_of(config) / "multirun.yaml")
        except Exception as e:  # a sweep dir naming ${hydra:...}, not resolvable yet
            log.warning("multirun.yaml will not be redacted on an early failure: %s", e)
        if not enabled(config):
            return
        try:
            # Creates or upgrades the store once (under a lock: another sweep process may be
            # doing the same), before this sweep's parallel jobs could race on it.
            store = store_for(uri_of(config), config)
            uri = store.uri
            experiment = str(config.experiment_name)
            exp_id = store.experiment_id(experiment)
            sweep_dir = sweep_dir_of(config)
        except Exception as e:
            # Each job will hit (and report) the same problem in its own callback.
            log.error("MLflow tracking could not start the sweep: %s", e)
            return
        state.sweep = Sweep(uri=uri, dir=sweep_dir)
        SweepParents(sweep_dir).set_overrides(logged_overrides(config))
        # The Optuna sweeper makes one parent per study (reused on resume and by other
        # sweep processes) and registers it before its first job.
        managed = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        if managed not in SELF_MANAGED_SWEEPERS and not _swept(
            config, ("dataset", "experiment_name")
        ):
            SweepParents(sweep_dir).get_or_create(
                uri, exp_id, lambda rec: create_parent(store, exp_id, config, sweep_dir, rec)
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the job's run: params, configs, provenance."""
        register()
        install_log_redaction()
        state.job, state.job_error = None, None
        redact_hydra_files(config)
        if not enabled(config):
            state.job = NullRun()
            return
        try:
            state.job = start_job(config)
        except Exception as e:
            # Raising here would only become a warning; the job raises it instead.
            state.job_error = as_runner_error(e)
            log.error("%s", state.job_error)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """End the job's run: FINISHED, or FAILED with the error as a tag."""
        # Hydra prints them raw when it reports a failed job ("Error executing job with
        # overrides: [...]").
        job_return.overrides = [redact_override(str(o)) for o in job_return.overrides or []]
        if isinstance(job_return._return_value, BaseException):
            redact_exception(job_return._return_value)  # its message is printed and tagged
        # Held from here: the run leaves the process state before it is ended.
        with interrupts.held():
            self._end_job(job_return)

    @staticmethod
    def _end_job(job_return: JobReturn) -> None:
        job, state.job, state.job_error = state.job, None, None
        trial = trial_mod.current()
        if isinstance(job, JobRun):
            error: BaseException | None = None
            if job_return.status != JobStatus.COMPLETED and trial is not None:
                # Not through the property: it logs "Error executing job", wrong for a
                # pruned trial (the sweeper reports every trial's end itself).
                raw = job_return._return_value
                error = raw if isinstance(raw, BaseException) else RunnerError(str(raw))
            elif job_return.status != JobStatus.COMPLETED:
                try:
                    job_return.return_value  # noqa: B018 - re-raises the job's exception
                except BaseException as e:
                    error = e
            status = "FINISHED" if error is None else "FAILED"
            if trial is not None:
                # The same rule the sweeper tells Optuna: pruned is not a failure, and a
                # NaN objective is one.
                ok = job_return.status == JobStatus.COMPLETED
                value = job_return._return_value if ok else error
                result = trial_mod.outcome(ok, value, len(trial.ref.directions))
                job.set_tags({contract.TRIAL_STATE: result.state})
                if result.state == "PRUNED":
                    status, error = "FINISHED", None
                elif result.state == "FAIL" and error is None:
                    status, error = "FAILED", RunnerError(result.error or "failed trial")
            job.finish(status, error=error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """End the sweep's parent runs (Hydra calls this only when the sweep returns)."""
        close_open_runs("FINISHED")


def _swept(config: DictConfig, keys: tuple[str, ...]) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    raw = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    try:
        parsed = OverridesParser.create().parse_overrides([str(o) for o in raw])
    except Exception:  # a bad override is reported by Hydra itself
        return True
    return any(o.is_sweep_override() and o.key_or_group.split(".")[0] in keys for o in parsed)
