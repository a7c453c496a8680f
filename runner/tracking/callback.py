"""The Hydra callback that logs every job to MLflow.

Configured under ``hydra.callbacks.mlflow`` in conf/config.yaml. One run per job; in a
multirun, one parent run per sweep (per experiment) created before the jobs start, and every
job's run nested under it with MLflow's ``mlflow.parentRunId`` tag.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

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
    add_secret_keys,
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
    is_runner_app,
    redact_on_exit,
    state,
    store_for,
    uri_of,
)
from runner.tracking.settings import Settings, experiment_of
from runner.tracking.store import public_uri

__all__ = ["MLflowCallback", "return_value_metrics"]

log = logging.getLogger(__name__)


class MLflowCallback(Callback):
    """Log each Hydra job as an MLflow run; nest a sweep's jobs under a parent run.

    Add it to any Hydra app under ``hydra.callbacks.<name>`` (``_target_:
    runner.tracking.callback.MLflowCallback``). Its arguments are
    :class:`~runner.tracking.settings.Settings` (read from the config by every process);
    in the runner's own app, its ``backend``, ``experiment_name`` and ``tracking.*`` keys win.

    Args:
        tracking_uri: Where runs go (default ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///<launch dir>/mlflow.db``).
        experiment_name: The MLflow experiment (default: the app's job name).
        exclude: Config keys left out of params (a key excludes everything under it).
        secret_keys: Extra regular expressions naming secret config keys.
        log_return_value: Log the task's return value as metrics (``return_value``, one
            metric per key of a dict, ``return_value_<i>`` for a list).

    Raises:
        ConfigError: An unknown argument or a value of the wrong type.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        exclude: Sequence[str] = (),
        secret_keys: Sequence[str] = (),
        log_return_value: bool = True,
        **unknown: Any,
    ) -> None:
        self.settings = Settings.make(
            {
                "tracking_uri": tracking_uri,
                "experiment_name": experiment_name,
                "exclude": list(exclude),
                "secret_keys": list(secret_keys),
                "log_return_value": log_return_value,
                **unknown,
            }
        )
        add_secret_keys(self.settings.secret_keys)
        # Hydra sends a job's log lines to a file in its output dir too.
        install_log_redaction()
        self._started: float | None = None

    def _setup(self, config: DictConfig) -> None:
        # Again in each job: a launcher's worker processes get this object pickled, without
        # running __init__.
        register()
        add_secret_keys(self.settings.secret_keys)
        install_log_redaction()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Redact ``hydra.job.override_dirname`` before Hydra makes the job's output dir."""
        redact_job_dirname(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the sweep's parent run before any job starts."""
        self._setup(config)
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
            exp_id = store.experiment_id(experiment_of(config))
            sweep_dir = sweep_dir_of(config)
        except Exception as e:
            if not is_runner_app(config):
                _abort(config, as_runner_error(e))
            # Each job will hit (and report) the same problem in its own callback.
            log.error("MLflow tracking could not start the sweep: %s", e)
            return
        state.sweep = Sweep(uri=uri, dir=sweep_dir)
        # The Optuna sweeper makes one parent per study (reused on resume and by other
        # sweep processes) and registers it before its first job.
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        managed = sweeper in SELF_MANAGED_SWEEPERS
        parents = SweepParents(sweep_dir)
        parents.begin(logged_overrides(config), keep_parents=managed)
        if not managed and not _swept(config, ("dataset", "experiment_name")):
            parents.get_or_create(
                uri, exp_id, lambda rec: create_parent(store, exp_id, config, sweep_dir, rec)
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the job's run: params, configs, provenance."""
        self._setup(config)
        self._started = time.monotonic()
        state.job, state.job_error = None, None
        redact_hydra_files(config)
        # A worker job of an Optuna sweep run through a launcher (runner.sweeps.optuna.
        # _launched) is no experiment: only the trials it runs get runs.
        if not enabled(config) or _is_sweep_worker(config):
            state.job = NullRun()
            return
        try:
            state.job = start_job(config)
        except Exception as e:
            # Raising here would only become a warning; the runner's task raises it instead.
            state.job_error = as_runner_error(e)
            if not is_runner_app(config):
                _abort(config, state.job_error)  # a task of another app never asks
            log.error("%s", state.job_error)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """End the job's run: FINISHED, or FAILED with the error as a tag."""
        # Hydra prints them raw when it reports a failed job ("Error executing job with
        # overrides: [...]").
        job_return.overrides = [redact_override(str(o)) for o in job_return.overrides or []]
        if isinstance(job_return._return_value, BaseException):
            redact_exception(job_return._return_value)  # its message is printed and tagged
        if self.settings.log_return_value and isinstance(state.job, JobRun):
            _log_return_value(state.job, job_return)
        job = state.job
        # Held from here: the run leaves the process state before it is ended.
        with interrupts.held():
            self._end_job(job_return)
        if isinstance(job, JobRun) and not str(config.hydra.mode).endswith("MULTIRUN"):
            _run_summary(config, job, job_return, getattr(self, "_started", None))

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
                # Not through the property either: it writes "Error executing job with
                # overrides" to stderr, and Hydra reads it again after this callback (its
                # sweeper, or `run` for a single job), which printed that line twice.
                raw = job_return._return_value
                error = raw if isinstance(raw, BaseException) else RunnerError(str(raw))
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


def _is_sweep_worker(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.sweeper.worker", default=None) is not None


def _run_summary(
    config: DictConfig, job: JobRun, job_return: JobReturn, started: float | None
) -> None:
    """A single run's last lines: its id, status, objective and where to see it."""
    from runner.tracking.summary import emit, format_run, is_quiet

    if is_quiet(config):
        return
    try:
        ok = job_return.status == JobStatus.COMPLETED
        value = job_return._return_value if ok else None  # not the property: it re-raises
        metrics = return_value_metrics(value) if ok else None
        objective = OmegaConf.select(config, "objective", default=None)
        lines = format_run(
            run_id=job.run_id,
            name=_run_name(config),
            status="FINISHED" if ok else "FAILED",
            uri=job.store.uri,
            experiment_id=job.store.experiment_id(experiment_of(config)),
            wall_s=time.monotonic() - started if started is not None else None,
            objective=str(objective) if objective else None,
            value=metrics.get("return_value") if metrics else None,
        )
        if job.store.buffered_for:
            target = public_uri(job.store.buffered_for)
            lines.append(f"  (buffered: `python -m runner.sync` sends it to {target})")
        emit(lines)
    except Exception as e:  # the run is ended; a missing summary is only a missing summary
        log.warning("could not summarise run %s: %s", job.run_id, e)


def _run_name(config: DictConfig) -> str | None:
    from runner.tracking.runs import job_name, varied_overrides

    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None)
    if choices is None:
        return None
    return job_name(choices, varied_overrides(logged_overrides(config), None))


def _abort(config: DictConfig, error: BaseException) -> NoReturn:
    """Stop the command: a misconfigured callback must not be a silent no-op.

    Hydra turns a callback's exceptions into warnings, and another app's task never asks the
    callback for its run, so this exits (``SystemExit`` passes through Hydra's handlers).
    """
    raise SystemExit(
        f"error: the MLflow callback cannot track this job: {error} (hydra.callbacks: "
        f"tracking_uri={public_uri(_uri_for_message(config))})"
    )


def _uri_for_message(config: DictConfig) -> str:
    """The tracking URI for messages (``?`` when it cannot even be worked out)."""
    try:
        return uri_of(config)
    except Exception:
        return "?"


def _metric_name(key: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", key)[:250] or "_"


def return_value_metrics(value: Any) -> dict[str, float] | None:
    """The metrics of a task's return value: a number as ``return_value``, a dict of numbers
    one metric per key, a list or tuple ``return_value_0``, ``_1``, ...; None otherwise."""

    def number(v: Any) -> bool:
        return (isinstance(v, int | float) and not isinstance(v, bool)) or _is_scalar_number(v)

    if number(value):
        return {"return_value": float(value)}
    if isinstance(value, Mapping) and value and all(number(v) for v in value.values()):
        return {_metric_name(str(k)): float(v) for k, v in value.items()}
    if isinstance(value, list | tuple) and value and all(number(v) for v in value):
        return {f"return_value_{i}": float(v) for i, v in enumerate(value)}
    return None


def _is_scalar_number(value: Any) -> bool:
    # numpy and torch scalars (a 0-d array or tensor) have .item() and a float value.
    item = getattr(value, "item", None)
    if not callable(item) or getattr(value, "ndim", 0) not in (0, None):
        return False
    try:
        scalar = item()
    except (TypeError, ValueError, RuntimeError):
        return False
    return isinstance(scalar, int | float) and not isinstance(scalar, bool)


def _log_return_value(job: JobRun, job_return: JobReturn) -> None:
    if job_return.status != JobStatus.COMPLETED:
        return
    value = job_return._return_value  # not the property: it re-raises a failure
    if value is None:
        return
    metrics = return_value_metrics(value)
    if metrics is None:
        log.warning(
            "the task returned a %s, not a number, a dict of numbers or a list of numbers; "
            "it is not logged as metrics (set log_return_value: false to silence this).",
            type(value).__name__,
        )
        return
    job.log_metrics(metrics)


def _swept(config: DictConfig, keys: tuple[str, ...]) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    raw = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    try:
        parsed = OverridesParser.create().parse_overrides([str(o) for o in raw])
    except Exception:  # a bad override is reported by Hydra itself
        return True
    return any(o.is_sweep_override() and o.key_or_group.split(".")[0] in keys for o in parsed)
