"""The Hydra callback that marks a replay's run; ``runner.replay`` adds it to the job.

Replay hands it to the job after the MLflow callback (Hydra calls ``on_job_start`` in list
order), so the job's run exists: it tags the run and records its id for ``replay --check``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner import contract
from runner.tracking.runs import logged_overrides
from runner.tracking.session import state

__all__ = ["ReplayCallback"]

log = logging.getLogger(__name__)


class ReplayCallback(Callback):
    """Tag the job's run as a replay of ``source_run_id``.

    Args:
        source_run_id: The replayed run.
        source_overrides: The source job's overrides; ``runner.overrides`` of the replay
            becomes these followed by the replay's own, i.e. its overrides of ``conf/``.
        note: The run's description (``mlflow.note.content``, markdown).
    """

    def __init__(
        self,
        *,
        source_run_id: str,
        source_overrides: Sequence[str] = (),
        note: str = "",
        **_: Any,
    ) -> None:
        self.source_run_id = source_run_id
        self.source_overrides = [str(o) for o in source_overrides]
        self.note = note
        #: The replay's run, once the MLflow callback has started it.
        self.run_id: str | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Tag the run the MLflow callback just started."""
        job = state.job
        if job is None or job.run_id is None:
            return
        new = logged_overrides(config)
        job.set_tags(
            {
                contract.REPLAY_OF: self.source_run_id,
                contract.REPLAY_OVERRIDES: json.dumps(new),
                contract.OVERRIDES: json.dumps([*self.source_overrides, *new]),
                contract.NOTE: self.note,
            }
        )
        self.run_id = job.run_id
