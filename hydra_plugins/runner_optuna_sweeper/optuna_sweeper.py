"""The Sweeper class Hydra instantiates for ``hydra/sweeper=optuna``: a thin shell."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Sample Hydra overrides with Optuna (ask/tell) and run each trial as a Hydra job."""

    def __init__(self, **kwargs: Any) -> None:
        # The keys are validated in runner.sweeps.optuna once the full config is known.
        self._kwargs = kwargs
        self._impl: Any = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        """Keep what the sweep needs (called by Hydra before :meth:`sweep`)."""
        from runner.sweeps.optuna import OptunaSweep

        self.hydra_context = hydra_context
        self.config = config
        # The sweep instantiates the launcher itself (hydra/launcher other than basic): it
        # launches hydra.sweeper.n_workers worker jobs, each a sweep loop on the shared study.
        self.launcher = None
        self._impl = OptunaSweep(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run the study; its best trial is written to ``optimization_results.yaml``.

        Returns None, as the official plugin does: Hydra's ``multirun`` passes a sweeper's
        return on to no one (``hydra.main`` drops it).
        """
        self._impl.run(arguments)
