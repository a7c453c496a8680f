"""The Sweeper class Hydra instantiates for ``hydra/sweeper=grid``."""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from runner.composer import ComposingLoader


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper (cartesian product, batches), composing each job once.

    Hydra's sweeper composes every job in full to validate a batch, and its launcher
    composes it in full again: about 0.2 s a job here. Here each job is composed once, from a
    template (:class:`runner.composer.ComposingLoader`), when its batch is validated, and the
    launcher gets that config.
    """

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        """Set up Hydra's basic sweeper (and its launcher) on the composing loader."""
        self._loader = ComposingLoader(hydra_context.config_loader, config)
        super().setup(
            hydra_context=HydraContext(
                config_loader=self._loader, callbacks=hydra_context.callbacks
            ),
            task_function=task_function,
            config=config,
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of the batch before it starts; the launcher reuses them."""
        for overrides in batch:
            self._loader.validate(list(overrides))
