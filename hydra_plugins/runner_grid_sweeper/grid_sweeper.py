"""The Sweeper class Hydra instantiates for ``hydra/sweeper=grid``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.errors import ConfigError
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

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        progress: str = "auto",
    ) -> None:
        """Hydra's basic sweeper's arguments, and ``progress`` (``none``: no summary).

        Raises:
            ConfigError: ``progress`` is not ``auto``, ``rich``, ``log`` or ``none``.
        """
        super().__init__(max_batch_size=max_batch_size, params=params)
        if progress not in _PROGRESS_MODES:
            raise ConfigError(
                f"hydra.sweeper.progress is {progress!r}; it must be one of "
                f"{', '.join(_PROGRESS_MODES)} (none: no summary when the sweep ends)."
            )
        self.progress = progress

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

    def sweep(self, arguments: list[str]) -> Any:
        """Hydra's ``BasicSweeper.sweep``, then a summary of the sweep (best, counts, runs).

        Step for step Hydra's: batches run in turn, and a batch with a failed job stops the
        sweep with that job's error once the batch is over. The summary comes first.
        """
        assert self.config is not None
        assert self.launcher is not None
        assert self.hydra_context is not None
        start = time.monotonic()
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(params_conf)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        returns: list[Sequence[JobReturn]] = []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            returns.append(results)
            failed = [r for r in results if r.status != JobStatus.COMPLETED]
            if failed or self.is_done():
                self._summary([r for rs in returns for r in rs], time.monotonic() - start)
            for r in failed:
                # Raises the job's error (Hydra prints "Error executing job ..." once).
                _ = r.return_value
            initial_job_idx += len(batch)
        return returns

    def _summary(self, jobs: list[JobReturn], wall_s: float) -> None:
        assert self.config is not None
        from runner.tracking.summary import is_quiet

        if self.progress == "none" or is_quiet(self.config):
            return
        try:
            _print_summary(self.config, jobs, wall_s)
        except Exception as e:  # a summary is never worth failing the sweep over
            log.warning("could not summarise the sweep: %s", e)


_PROGRESS_MODES = ("auto", "rich", "log", "none")


def _objective(job: JobReturn) -> tuple[float, str | None, str] | None:
    """``(value, objective name, direction)`` of a completed job returning one number."""
    value = job._return_value  # not the property: it re-raises a failure
    if job.status != JobStatus.COMPLETED or isinstance(value, bool):
        return None
    if not isinstance(value, int | float) or not math.isfinite(float(value)):
        return None
    try:
        direction = OmegaConf.select(job.cfg, "direction", default=None) if job.cfg else None
        name = OmegaConf.select(job.cfg, "objective", default=None) if job.cfg else None
    except Exception:  # an interpolation that no longer resolves: no best from this job
        return None
    if direction not in ("maximize", "minimize"):
        return None
    return float(value), (str(name) if name else None), str(direction)


def _print_summary(config: DictConfig, jobs: list[JobReturn], wall_s: float) -> None:
    from runner.tracking.redact import redact_override
    from runner.tracking.runs import logged_overrides, parent_name, sweep_dir_of, varied_overrides
    from runner.tracking.summary import SweepSummary, emit, format_sweep, sweep_parents

    counts = {
        "completed": sum(j.status == JobStatus.COMPLETED for j in jobs),
        "failed": sum(j.status != JobStatus.COMPLETED for j in jobs),
    }
    sweep = logged_overrides(config)
    scored = [(j, o) for j in jobs if (o := _objective(j)) is not None]
    summary = SweepSummary(
        title=parent_name(config, sweep, fallback=Path(str(config.hydra.sweep.dir)).name),
        counts=counts,
        wall_s=wall_s,
        parents=sweep_parents(sweep_dir_of(config)),
    )
    directions = {o[2] for _, o in scored}
    if len(directions) == 1:
        pick = max if directions == {"maximize"} else min
        best, (value, name, _) = pick(scored, key=lambda jo: jo[1][0])
        summary.best_value, summary.objective = value, name
        summary.best_label = f"job #{best.hydra_cfg.hydra.job.num}" if best.hydra_cfg else None
        job_overrides = [redact_override(str(o)) for o in best.overrides or []]
        summary.best_params = varied_overrides(job_overrides, sweep, groups=True)
    elif not counts["completed"]:
        summary.note = "no job completed"
    elif len(directions) > 1:
        summary.note = "the jobs optimise different directions: no single best"
    emit(format_sweep(summary))
