"""The Sweeper class Hydra instantiates for ``hydra/sweeper=grid``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from runner.interrupts import checkpoint
from runner.sweeps.composer import ComposingLoader
from runner.sweeps.hydra_job import run_job

log = logging.getLogger(__name__)


class _Launcher(BasicLauncher):
    """Hydra's basic launcher, running each job through :func:`runner.sweeps.hydra_job.run_job`."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Run the batch's jobs one after the other, as ``BasicLauncher.launch`` does."""
        setup_globals()
        assert self.hydra_context is not None
        assert self.config is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            checkpoint()  # a signal received meanwhile stops the sweep between two jobs
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            runs.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper (cartesian product, batches), composing each job once.

    Hydra's sweeper composes every job in full to validate a batch, and its launcher
    composes it in full again: about 0.2 s a job here. Here each job is composed once, from a
    template (:class:`runner.composer.ComposingLoader`), when its batch is validated, and the
    launcher gets that config. Under Hydra's basic launcher (the default) the jobs run
    through :func:`runner.sweeps.hydra_job.run_job`; other launchers (joblib, ...) run as they are.
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
        context = HydraContext(config_loader=self._loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)
        if type(self.launcher) is BasicLauncher:
            self.launcher = _Launcher()
            self.launcher.setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of the batch before it starts; the launcher reuses them."""
        for overrides in batch:
            self._loader.validate(list(overrides))
