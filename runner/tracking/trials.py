"""The MLflow runs of Optuna trials whose process died: ended KILLED by a survivor.

A sweep worker killed mid-trial (SIGKILL, a lost node) leaves its trial RUNNING in the
study and its job's run RUNNING in MLflow. The surviving sweep process that fails and
re-queues the trial (heartbeat or dead local owner, runner.sweeps.optuna.storage) calls
:func:`close_dead_trials`, so no ``close-stale`` is needed for it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from omegaconf import DictConfig

from runner import contract
from runner.tracking.reader import search_runs
from runner.tracking.session import enabled, store_for, uri_of
from runner.tracking.settings import settings_of

__all__ = ["close_dead_trials"]

log = logging.getLogger(__name__)


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
        runs = search_runs(
            store.client,
            [experiment_id],
            f"tags.`{contract.PARENT_RUN_ID}` = '{parent}' and attributes.status = 'RUNNING'",
        )
        wanted = {str(n) for n in numbers}
        closed = 0
        for run in runs:
            number = run.data.tags.get(contract.TRIAL_NUMBER)
            if number not in wanted:
                continue
            # Tag first: a crash between the two calls leaves the run RUNNING, and
            # close-stale still finds it.
            store.set_tag(run.info.run_id, contract.CLOSED_REASON, why)
            store.set_tag(run.info.run_id, contract.TRIAL_STATE, "FAIL")
            store.end_run(run.info.run_id, "KILLED")
            closed += 1
        return closed
    except Exception as e:  # the study is what matters; close-stale can still end them
        log.warning("could not end the MLflow runs of dead trials %s: %s", sorted(numbers), e)
        return 0
