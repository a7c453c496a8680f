"""The Hydra callback that logs every job to MLflow.

Configured under ``hydra.callbacks.mlflow`` in conf/config.yaml. One run per job; in a
multirun, one parent run per sweep (per experiment) created before the jobs start, and every
job's run nested under it with MLflow's ``mlflow.parentRunId`` tag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import interrupts
from runner import trial as trial_mod
from runner.config import register
from runner.errors import ConfigError, RunnerError, TrackingError
from runner.tracking import provenance
from runner.tracking._state import Sweep, state
from runner.tracking.backends import backend_of
from runner.tracking.job import JobRun, NullRun
from runner.tracking.params import config_params, public_config
from runner.tracking.redact import redact_file, redact_override
from runner.tracking.store import Store, check_reachable, ensure_store, public_uri, resolve_uri
from runner.tracking.sweep import SELF_MANAGED_SWEEPERS, SweepParents

__all__ = ["MLflowCallback", "close_job_run", "close_open_runs"]

log = logging.getLogger(__name__)

_stores: dict[str, Store] = {}

#: Where runs go while the tracking server is down (``tracking.on_unavailable=buffer``).
BUFFER_DIR = ".runner_buffer"
ON_UNAVAILABLE = ("fail", "buffer")


def _store(uri: str, config: DictConfig | None = None) -> Store:
    # One client per store and process; the reachability check and the schema creation run
    # once per store and process, before the first run is created.
    if uri in _stores:
        return _stores[uri]
    try:
        check_reachable(uri)
        ensure_store(uri)
    except TrackingError as e:
        if config is None or _on_unavailable(config) != "buffer":
            raise
        buffer = resolve_uri(f"sqlite:///{BUFFER_DIR}/mlflow.db", Path(_launch_dir(config)))
        Path(buffer[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        log.warning(
            "%s Buffering runs in %s instead (tracking.on_unavailable=buffer); replay them "
            "with `python -m runner.sync` once the server is back.",
            e,
            buffer,
        )
        store = _store(buffer)
        store.buffered_for = uri
        _stores[uri] = store
        return store
    root = OmegaConf.select(config, "backend.artifact_root", default=None) if config else None
    _stores[uri] = Store(uri, artifact_root=str(root) if root else None)
    return _stores[uri]


def _on_unavailable(config: DictConfig) -> str:
    value = str(OmegaConf.select(config, "tracking.on_unavailable", default="fail"))
    if value not in ON_UNAVAILABLE:
        raise ConfigError(
            f"tracking.on_unavailable is {value!r}; it must be one of {', '.join(ON_UNAVAILABLE)}."
        )
    return value


def _enabled(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "backend.enabled", default=False))


def _uri(config: DictConfig) -> str:
    return backend_of(config, Path(_launch_dir(config))).uri


def _launch_dir(config: DictConfig) -> str:
    return str(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or Path.cwd())


def _common_tags(config: DictConfig, store: Store) -> dict[str, str]:
    prov = provenance.collect(_launch_dir(config))
    tags = prov.tags()
    tags["runner.backend"] = str(OmegaConf.select(config, "backend.name", default="local"))
    tags["runner.tracking_uri"] = public_uri(store.buffered_for or store.uri)
    if store.buffered_for:
        # `python -m runner.sync` replays the run there and removes this tag.
        tags["runner.buffered_for"] = public_uri(store.buffered_for)
    tags["mlflow.source.name"] = "runner"
    return tags


def _overrides(config: DictConfig) -> list[str]:
    raw = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    return [redact_override(str(o)) for o in raw]


def _create_parent(
    store: Store,
    experiment_id: str,
    config: DictConfig,
    sweep_dir: Path,
    recorded: list[str] | None,
) -> str:
    # Parents made by a job (a sweep over datasets) name the sweep's overrides, not the job's.
    overrides = recorded if recorded is not None else _overrides(config)
    tags = _common_tags(config, store)
    tags.update(
        {
            "runner.kind": "sweep",
            "runner.sweep_dir": str(sweep_dir.resolve()),
            "runner.overrides": json.dumps(overrides),
        }
    )
    name = "sweep " + (" ".join(overrides) if overrides else sweep_dir.name)
    return store.create_run(experiment_id, name=name[:250], tags=tags)


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(OmegaConf.select(config, "hydra.sweep.dir")))


def _redact_hydra_files(config: DictConfig) -> None:
    # Hydra writes the raw overrides (secrets included) before any callback runs.
    out = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
    sub = OmegaConf.select(config, "hydra.output_subdir", default=None)
    if out and sub:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            redact_file(Path(out) / str(sub) / name)
    if OmegaConf.select(config, "hydra.mode", default=None) is not None and str(
        config.hydra.mode
    ).endswith("MULTIRUN"):
        redact_file(_sweep_dir(config) / "multirun.yaml")


def _job_artifacts(
    config: DictConfig, public: dict[str, Any], prov: provenance.Provenance
) -> dict[str, str]:
    import yaml

    files = {"config.yaml": yaml.safe_dump(public, sort_keys=False)}
    out = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
    sub = OmegaConf.select(config, "hydra.output_subdir", default=None)
    if out and sub:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            path = Path(out) / str(sub) / name
            if path.is_file():
                files[f".hydra/{name}"] = path.read_text(encoding="utf-8")
    if prov.git_dirty and prov.git_diff:
        files["provenance/git_diff.patch"] = prov.git_diff
    return files


def _start_job(config: DictConfig) -> JobRun:
    store = _store(_uri(config), config)
    experiment = str(config.experiment_name)
    exp_id = store.experiment_id(experiment)
    hc = config.hydra
    multirun = str(hc.mode).endswith("MULTIRUN")
    parent = None
    if multirun:
        sweep_dir = _sweep_dir(config)
        parent = SweepParents(sweep_dir).get_or_create(
            store.uri, exp_id, lambda rec: _create_parent(store, exp_id, config, sweep_dir, rec)
        )
    choices: Mapping[str, Any] = OmegaConf.to_container(hc.runtime.choices)  # type: ignore[assignment]
    # The logged config.yaml and the params come from one resolved, redacted copy.
    public = public_config(config, skip=frozenset({"hydra"}))
    params = config_params(public, choices)
    prov = provenance.collect(_launch_dir(config))
    tags = _common_tags(config, store)
    overrides = _overrides(config)
    tags.update(
        {
            "runner.kind": "job",
            "runner.overrides": json.dumps(overrides),
            "runner.seed": str(OmegaConf.select(config, "seed", default="")),
            "runner.output_dir": str(hc.runtime.output_dir),
        }
    )
    name = f"{choices.get('model', 'model')}-{choices.get('dataset', 'data')}"
    trial = trial_mod.current()
    if trial is not None:
        tags["runner.trial_number"] = str(trial.number)
        tags["runner.study"] = trial.ref.study_name
    if multirun:
        tags["runner.job_num"] = str(hc.job.num)
        name = f"{name}-{hc.job.num}"
    run_id: str | None = None
    try:
        # A kill between creating the run and holding its id would leave it RUNNING.
        with interrupts.held():
            run_id = store.create_run(exp_id, name=name, tags=tags, parent_id=parent)
        store.log_batch(run_id, params=params)
        store.log_files(run_id, _job_artifacts(config, public, prov))
        store.activate(run_id)
        flush = OmegaConf.select(config, "tracking.flush_every_s", default=10.0)
        return JobRun(store, run_id, flush_every_s=float(flush))
    except BaseException as e:
        # Ctrl-C or SIGTERM while the run is being set up is a kill, not a failure.
        if run_id is not None:
            store.end_run(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def _as_runner_error(e: BaseException) -> BaseException:
    if isinstance(e, RunnerError) or not isinstance(e, Exception):
        return e
    err = TrackingError(f"MLflow tracking could not start: {type(e).__name__}: {e}")
    err.__cause__ = e
    return err


class MLflowCallback(Callback):
    """Log each Hydra job as an MLflow run; nest a sweep's jobs under a parent run."""

    def __init__(self, **_: Any) -> None:
        pass

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create the sweep's parent run before any job starts."""
        register()
        state.sweep = None
        if not _enabled(config):
            return
        try:
            # Creates or upgrades the store once (under a lock: another sweep process may be
            # doing the same), before this sweep's parallel jobs could race on it.
            store = _store(_uri(config), config)
            uri = store.uri
            experiment = str(config.experiment_name)
            exp_id = store.experiment_id(experiment)
            sweep_dir = _sweep_dir(config)
        except Exception as e:
            # Each job will hit (and report) the same problem in its own callback.
            log.error("MLflow tracking could not start the sweep: %s", e)
            return
        state.sweep = Sweep(uri=uri, dir=sweep_dir)
        SweepParents(sweep_dir).set_overrides(_overrides(config))
        # The Optuna sweeper makes one parent per study (reused on resume and by other
        # sweep processes) and registers it before its first job.
        managed = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        if managed not in SELF_MANAGED_SWEEPERS and not _swept(
            config, ("dataset", "experiment_name")
        ):
            SweepParents(sweep_dir).get_or_create(
                uri, exp_id, lambda rec: _create_parent(store, exp_id, config, sweep_dir, rec)
            )

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the job's run: params, configs, provenance."""
        register()
        state.job, state.job_error = None, None
        _redact_hydra_files(config)
        if not _enabled(config):
            state.job = NullRun()
            return
        try:
            state.job = _start_job(config)
        except Exception as e:
            # Raising here would only become a warning; the job raises it instead.
            state.job_error = _as_runner_error(e)
            log.error("%s", state.job_error)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """End the job's run: FINISHED, or FAILED with the error as a tag."""
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
                job.set_tags({"runner.trial_state": result.state})
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


def close_job_run(status: str) -> None:
    """End this process's job run (if open) with ``status``; sweep parents stay open.

    The Optuna sweeper calls this when Ctrl-C or SIGTERM interrupts a trial's job, which
    Hydra's ``run_job`` lets through without calling ``on_job_end``.
    """
    job, state.job, state.job_error = state.job, None, None
    if isinstance(job, JobRun):
        try:
            job.set_tags({"runner.trial_state": "FAIL"} if trial_mod.current() else {})
            job.finish(status)
        except Exception as e:
            log.error("could not end run %s: %s", job.run_id, e)


def close_open_runs(status: str, error: BaseException | None = None) -> None:
    """End whatever this process left open: its job's run and its sweep's parents.

    The entry point calls this on every way out (success, error, Ctrl-C, SIGTERM), since
    Hydra calls ``on_multirun_end`` only when a sweep returns normally. A second Ctrl-C
    meanwhile is ignored: it would leave the rest RUNNING.
    """
    with interrupts.held(drop=True):
        _close_open_runs(status, error)


def _close_open_runs(status: str, error: BaseException | None) -> None:
    job, state.job = state.job, None
    if isinstance(job, JobRun):
        try:
            job.finish(status, error=error)
        except Exception as e:
            log.error("could not end run %s: %s", job.run_id, e)
    sweep, state.sweep = state.sweep, None
    if sweep is None:
        return
    for uri, parents in SweepParents(sweep.dir).all().items():
        store = _store(uri)
        for run_id in parents.values():
            try:
                if store.client.get_run(run_id).info.status == "RUNNING":
                    store.end_run(run_id, status)
            except Exception as e:
                log.error("could not end sweep run %s: %s", run_id, e)
