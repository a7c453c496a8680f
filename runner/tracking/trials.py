"""The MLflow runs of Optuna trials whose process died: ended KILLED by a survivor.

A sweep worker killed mid-trial (SIGKILL, a lost node) leaves its trial RUNNING in the
study and its job's run RUNNING in MLflow. The surviving sweep process that fails and
re-queues the trial (heartbeat or dead local owner, runner.sweeps.optuna.storage) calls
:func:`close_dead_trials`, so no ``close-stale`` is needed for it. A launcher that
cancels its jobs (the Ray launcher, interrupted) ends what they left RUNNING with
:func:`close_launched_jobs`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner import contract
from runner.tracking.reader import search_runs
from runner.tracking.session import enabled, store_for, uri_of
from runner.tracking.settings import settings_of

__all__ = ["close_dead_trials", "close_launched_jobs"]

log = logging.getLogger(__name__)


def _running_children(store: Any, experiment_id: str, parent: str) -> list[Any]:
    """The RUNNING runs nested under ``parent``."""
    return search_runs(
        store.client,
        [experiment_id],
        f"tags.`{contract.PARENT_RUN_ID}` = '{parent}' and attributes.status = 'RUNNING'",
    )


def _kill(store: Any, run_id: str, why: str, *, trial: bool) -> None:
    """End ``run_id`` KILLED, tagged ``why`` (and ``runner.trial_state=FAIL`` for a trial)."""
    # Tag first: a crash between the calls leaves the run RUNNING, and close-stale still
    # finds it.
    store.set_tag(run_id, contract.CLOSED_REASON, why)
    if trial:
        store.set_tag(run_id, contract.TRIAL_STATE, "FAIL")
    store.end_run(run_id, "KILLED")


def close_dead_trials(config: DictConfig, study: Any, numbers: Collection[int], why: str) -> int:
    """End the RUNNING runs of trials ``numbers`` of ``study`` KILLED, tagged ``why``.

    Only the study's own child runs are touched (those under the parent recorded in the
    study's user attrs, in the store this config logs to). Best effort: an unreachable
    store is logged, never raised (the trial itself is already re-queued).

    Args:
        config: The sweep's config (which store, whether tracking is on).
        study: The Optuna study.
        numbers: The numbers of the trials that died.
        why: The reason, written to the ``runner.closed_reason`` tag.

    Returns:
        How many runs were ended.
    """
    if not numbers or settings_of(config) is None or not enabled(config):
        return 0
    try:
        store = store_for(uri_of(config), config)
        attrs = study.user_attrs
        parent = attrs.get(contract.STUDY_PARENT_ATTR)
        if parent is None or attrs.get(contract.STUDY_URI_ATTR) != store.uri:
            return 0
        experiment_id = store.client.get_run(parent).info.experiment_id
        wanted = {str(n) for n in numbers}
        closed = 0
        for run in _running_children(store, experiment_id, parent):
            if run.data.tags.get(contract.TRIAL_NUMBER) in wanted:
                _kill(store, run.info.run_id, why, trial=True)
                closed += 1
        return closed
    except Exception as e:  # the study is what matters; close-stale can still end them
        log.warning("could not end the MLflow runs of dead trials %s: %s", sorted(numbers), e)
        return 0


def close_launched_jobs(
    sweep_dir: Path,
    job_nums: Collection[int],
    why: str,
    *,
    started_after_ms: int = 0,
) -> int:
    """End KILLED, tagged ``why``, the runs a launcher's cancelled jobs left RUNNING.

    For a launcher that cancelled or killed its jobs (the Ray launcher on Ctrl-C or
    SIGTERM): a job killed before it could end its own run leaves it RUNNING. The runs
    touched are children of the sweep's parents (``sweep_dir``'s registry), RUNNING, whose
    output dir is under ``sweep_dir``, started at or after ``started_after_ms``, and either
    a grid job numbered in ``job_nums`` or an Optuna trial (run inside a worker job, whose
    number is not the worker's). Call it only once those jobs can no longer run. Best
    effort: a store that cannot be reached is logged, never raised.

    Args:
        sweep_dir: The sweep's directory (``hydra.sweep.dir``), absolute.
        job_nums: The Hydra job numbers of the cancelled jobs.
        why: The reason, written to the ``runner.closed_reason`` tag.
        started_after_ms: Runs started before this (epoch ms) are not the jobs'.

    Returns:
        How many runs were ended.
    """
    from runner.tracking.parents import SweepParents

    wanted = {str(n) for n in job_nums}
    root = Path(sweep_dir).resolve()
    closed = 0
    try:
        for uri, parents in SweepParents(root).all().items():
            store = store_for(uri)
            for experiment_id, parent in parents.items():
                for run in _running_children(store, experiment_id, parent):
                    tags = run.data.tags
                    trial = contract.TRIAL_NUMBER in tags
                    out = Path(tags.get(contract.OUTPUT_DIR) or "/")
                    if (
                        run.info.start_time < started_after_ms
                        or not out.is_relative_to(root)
                        or not (trial or tags.get(contract.JOB_NUM) in wanted)
                    ):
                        continue
                    _kill(store, run.info.run_id, why, trial=trial)
                    closed += 1
    except Exception as e:  # the interrupt goes on; close-stale can still end them
        log.warning("could not end the runs of the cancelled jobs of %s: %s", root, e)
    return closed
