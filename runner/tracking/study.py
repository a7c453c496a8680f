"""The MLflow side of an Optuna study: one parent run per study, its summary at the end.

The sweeper (runner.sweeps.optuna) calls :func:`study_tracker` and, when tracking is on,
:meth:`StudyTracker.open` before the first trial and :meth:`StudyTracker.close` on every way
out. The parent run's id is kept in the study's user attrs, so a resumed study, or a second
sweep process on the same study, nests its trials under the same parent. Each process also
records the parent in its sweep directory's :class:`SweepParents` registry, which is where
the callback looks when it nests a job's run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner import contract, interrupts
from runner.locks import file_lock
from runner.tracking.best import mark_best
from runner.tracking.reader import search_runs
from runner.tracking.runs import common_tags, logged_overrides
from runner.tracking.session import enabled, store_for, uri_of
from runner.tracking.settings import experiment_of, settings_of

__all__ = ["StudyInfo", "StudyTracker", "study_tracker"]

log = logging.getLogger(__name__)


@dataclass
class StudyInfo:
    """What the parent run records about the study."""

    study_name: str
    sampler: str
    pruner: str
    space: str
    directions: list[str]
    objectives: list[str]
    storage: str
    n_trials: int
    sweep_dir: Path
    lock_file: Path
    #: The lock every sweep process of the study shares (a database lock on PostgreSQL);
    #: None: a file lock at ``lock_file``.
    lock: Callable[[], AbstractContextManager[Any]] | None = None


def study_tracker(config: DictConfig) -> StudyTracker | None:
    """A tracker when the runner's MLflow callback is configured and tracking is on."""
    if settings_of(config) is None or not enabled(config):
        return None
    return StudyTracker(config)


class StudyTracker:
    """The parent run of one study in the store the runner's jobs log to."""

    def __init__(self, config: DictConfig) -> None:
        self.config = config
        # The callback's store for this config (a local buffer when the server is down and
        # tracking.on_unavailable=buffer): jobs nest under parents registered for its uri.
        self.store = store_for(uri_of(config), config)
        self.uri = self.store.uri
        self.experiment_id = self.store.experiment_id(experiment_of(config))
        self.parent_id: str | None = None

    # -- start ----------------------------------------------------------------------------
    def open(self, study: Any, info: StudyInfo) -> str:
        """Create the study's parent run once, or re-open it; register it for this sweep."""
        from runner.tracking.parents import SweepParents

        # Several sweep processes may open the same study at once: one creates the parent.
        # Signals wait until its id is recorded: a kill in between would orphan it RUNNING.
        lock = info.lock() if info.lock is not None else file_lock(info.lock_file)
        with interrupts.held(), lock:
            attrs = study.user_attrs
            run_id = (
                attrs.get(contract.STUDY_PARENT_ATTR)
                if attrs.get(contract.STUDY_URI_ATTR) == self.uri
                else None
            )
            if run_id and not self._exists(run_id):
                run_id = None
            if run_id is None:
                run_id = self._create(info)
                study.set_user_attr(contract.STUDY_PARENT_ATTR, run_id)
                study.set_user_attr(contract.STUDY_URI_ATTR, self.uri)
            else:
                self.store.client.update_run(run_id, status="RUNNING")
            self.parent_id = run_id
        self.store.log_batch(run_id, tags={contract.N_TRIALS: str(info.n_trials)})
        SweepParents(info.sweep_dir).set(self.uri, self.experiment_id, run_id)
        return run_id

    def _exists(self, run_id: str) -> bool:
        try:
            run = self.store.client.get_run(run_id)
        except Exception:
            return False
        return run.info.lifecycle_stage == "active"

    def _create(self, info: StudyInfo) -> str:
        tags = common_tags(self.config, self.store)
        tags.update(
            {
                contract.KIND: "sweep",
                contract.SWEEPER: "optuna",
                contract.SWEEP_DIR: str(info.sweep_dir.resolve()),
                contract.OVERRIDES: json.dumps(logged_overrides(self.config)),
            }
        )
        run_id = self.store.create_run(self.experiment_id, name=info.study_name[:250], tags=tags)
        # Only what never changes for a study is a param; MLflow params are write-once.
        self.store.log_batch(
            run_id,
            params={
                "study_name": info.study_name,
                "sampler": info.sampler,
                "pruner": info.pruner,
                "space": info.space[:6000],
                "directions": json.dumps(info.directions),
                "objectives": json.dumps(info.objectives),
                "storage": info.storage,
            },
        )
        return run_id

    # -- end ------------------------------------------------------------------------------
    def close(self, study: Any, info: StudyInfo, *, status: str, error: str | None = None) -> None:
        """Summarise the study on its parent (best, Pareto front, plots) and end it."""
        if self.parent_id is None:
            return
        try:
            self._summarise(study, info)
        except Exception as e:  # the status below matters more than a missing summary
            log.warning("could not summarise study %s in MLflow: %s", info.study_name, e)
        finally:
            if error:
                self.store.set_tag(self.parent_id, contract.ERROR, error)
            # With cooperating sweep processes the first to finish ends the parent and the
            # last one ends it again, with the final summary (the entry point's
            # close_open_runs would end it anyway).
            self.store.end_run(self.parent_id, status)

    def _children(self) -> dict[int, Any]:
        """The parent's child runs by trial number (a finished run wins over a killed one)."""
        assert self.parent_id is not None
        runs = search_runs(
            self.store.client,
            [self.experiment_id],
            f"tags.`{contract.PARENT_RUN_ID}` = '{self.parent_id}'",
        )
        by_number: dict[int, Any] = {}
        for run in runs:
            number = run.data.tags.get(contract.TRIAL_NUMBER)
            if number is None:
                continue
            old = by_number.get(int(number))
            if old is None or run.info.status == "FINISHED":
                by_number[int(number)] = run
        return by_number

    def _summarise(self, study: Any, info: StudyInfo) -> None:
        from optuna.trial import TrialState

        assert self.parent_id is not None
        trials = study.get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        metrics = [
            ("n_complete", counts[TrialState.COMPLETE]),
            ("n_pruned", counts[TrialState.PRUNED]),
            ("n_failed", counts[TrialState.FAIL]),
        ]
        tags: dict[str, str] = {}
        children = self._children()
        best_numbers: list[int] = []
        if counts[TrialState.COMPLETE]:
            if len(info.directions) == 1:
                best = study.best_trial
                best_numbers = [best.number]
                metrics.append(("best_value", float(best.value)))
                tags[contract.BEST_PARAMS] = json.dumps(best.params, default=str)
                tags[contract.BEST_TRIAL_NUMBER] = str(best.number)
                for key, value in best.params.items():
                    tags[f"best.{key}"] = str(value)
                if best.number in children:
                    tags[contract.BEST_RUN_ID] = children[best.number].info.run_id
            else:
                front = study.best_trials
                best_numbers = [t.number for t in front]
                for i, direction in enumerate(info.directions):
                    pick = max if direction == "maximize" else min
                    metrics.append((f"best_value_{i}", pick(t.values[i] for t in front)))
                pareto = [
                    {
                        "trial": t.number,
                        "values": dict(zip(info.objectives, t.values, strict=False)),
                        "params": t.params,
                        "run_id": children[t.number].info.run_id if t.number in children else None,
                    }
                    for t in front
                ]
                self.store.log_files(
                    self.parent_id, {"pareto_front.json": json.dumps(pareto, indent=2, default=str)}
                )
                tags[contract.PARETO_TRIALS] = json.dumps(best_numbers)
                tags[contract.BEST_RUN_ID] = ",".join(
                    children[n].info.run_id for n in best_numbers if n in children
                )
        ts = _now_ms()
        self.store.log_batch(
            self.parent_id,
            metrics=[(k, float(v), 0, ts) for k, v in metrics if math.isfinite(float(v))],
            tags=tags,
        )
        self._tag_best(children, set(best_numbers))
        if counts[TrialState.COMPLETE]:
            self._plots(study, info)

    def _tag_best(self, children: dict[int, Any], best: set[int]) -> None:
        ids = [run.info.run_id for number, run in children.items() if number in best]
        mark_best(self.store.client, list(children.values()), ids)

    def _plots(self, study: Any, info: StudyInfo) -> None:
        import warnings

        from optuna import visualization as vis

        assert self.parent_id is not None
        target: Any = None
        name = info.objectives[0] if info.objectives else "Objective Value"
        if len(info.directions) > 1:
            target = lambda t: t.values[0]  # noqa: E731 - plots show the first objective
        plots: dict[str, Any] = {
            "plots/optimization_history.html": vis.plot_optimization_history,
            "plots/param_importances.html": vis.plot_param_importances,
            "plots/parallel_coordinate.html": vis.plot_parallel_coordinate,
        }
        files: dict[str, str | bytes] = {}
        for path, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    # Optuna flags some plots experimental; that is no reason to fail a sweep.
                    warnings.simplefilter("ignore")
                    fig = plot(study, target=target, target_name=name)
                # plotly.js from its CDN: 10 kB per plot instead of 4.6 MB.
                files[path] = fig.to_html(include_plotlyjs="cdn", full_html=True)
            except Exception as e:  # e.g. importances need two completed trials
                log.info("no %s for study %s: %s", path, info.study_name, e)
        self.store.log_files(self.parent_id, files)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
