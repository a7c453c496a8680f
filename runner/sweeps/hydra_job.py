"""Hydra's ``run_job`` for the sweepers' jobs, without the copies it makes and throws away.

``hydra.core.utils.run_job`` sets the Hydra config twice (each a copy of the ``hydra`` node),
deep-copies the whole config to give the task a copy without the ``hydra`` node, and
deep-copies the ``hydra`` node once more for the job's return: about 30 ms a job here, the
largest part of what a small trial costs beyond its own work. This does the same steps in
the same order, with one copy of the ``hydra`` node (the one ``HydraConfig`` holds) and a
copy of the task's part only. Everything a job sees is as under Hydra's: the task config
(flags, type and resolver cache included), ``HydraConfig``, the output dir and its
``.hydra`` files, logging, ``hydra.job.env_set``, ``hydra.job.chdir``, the callbacks.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
)
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.interrupts import interruptible
from runner.tracking.redact import redact_job_dirname

__all__ = ["run_config", "run_job", "task_config"]


def task_config(config: DictConfig) -> DictConfig:
    """``copy.deepcopy(config)`` less its ``hydra`` node, without copying that node.

    For the copy the container shows a dict of its children without that node (OmegaConf
    keeps a ``DictConfig``'s children in ``_content``), then its own again, untouched; the
    copy keeps the root's flags, type and resolver cache, as the deep copy that Hydra's
    ``run_job`` then trims does.
    """
    content = config.__dict__["_content"]
    config.__dict__["_content"] = {k: v for k, v in content.items() if k != "hydra"}
    try:
        return copy.deepcopy(config)
    finally:
        config.__dict__["_content"] = content


def _interruptible(task_function: TaskFunction) -> TaskFunction:
    @functools.wraps(task_function)
    def task(cfg: DictConfig) -> Any:
        with interruptible():
            return task_function(cfg)

    return task


def run_job(
    *,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    config: DictConfig,
    job_dir_key: str,
    job_subdir_key: str | None,
) -> JobReturn:
    """Run one job as ``hydra.core.utils.run_job`` does (same arguments and return)."""
    if config.hydra.job.chdir is None and not version.base_at_least("1.2"):
        # An app on Hydra 1.1's defaults (it changes directory, with a warning): Hydra's own.
        return hydra_run_job(
            _interruptible(task_function),
            config,
            job_dir_key,
            job_subdir_key,
            hydra_context=hydra_context,
        )
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    # Before the output dir is made from it (`hydra.sweep.subdir=${hydra.job.override_dirname}`).
    redact_job_dirname(config)
    hydra_config = HydraConfig.instance()
    orig_hydra_cfg = hydra_config.cfg
    # Set for the output dir's interpolations (${hydra:job.num}, ...); then the output dir is
    # written into both the config and HydraConfig's copy, instead of setting it again.
    hydra_config.set_config(config)
    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        output_dir = os.path.join(output_dir, str(OmegaConf.select(config, job_subdir_key)))
    output_dir = os.path.abspath(output_dir)
    assert hydra_config.cfg is not None
    hydra_cfg: DictConfig = hydra_config.cfg  # type: ignore[assignment]
    for runtime in (config.hydra.runtime, hydra_cfg.hydra.runtime):
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = output_dir
    chdir = bool(hydra_cfg.hydra.job.chdir)  # None: False from Hydra 1.2 on (see above)
    try:
        ret = JobReturn()
        task_cfg = task_config(config)
        ret.cfg = task_cfg
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(output_dir) / str(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                # The task is the user's code: a signal stops it at once.
                with interruptible():
                    ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        hydra_config.cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)


def run_config(
    config: DictConfig,
    task_function: TaskFunction,
    *,
    extra_callbacks: Sequence[Any] = (),
) -> JobReturn:
    """Run one job from a config already composed with its ``hydra`` node, as ``Hydra.run``
    does (callbacks, output dir, ``.hydra`` files, logging), without composing it again.

    Replay composes a run's config once, checks it, and runs exactly that object.

    Args:
        config: ``hydra.compose(..., return_hydra_config=True)``'s result.
        task_function: The task.
        extra_callbacks: Callback objects notified after the config's own.
    """
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import setup_globals
    from hydra.types import RunMode

    setup_globals()
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.mode = RunMode.RUN
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(config)
    try:
        callbacks = Callbacks(config)
        callbacks.callbacks.extend(extra_callbacks)
        callbacks.on_run_start(config=config, config_name=None)
        # run_job reads only the callbacks of the context; the loader is for sweepers.
        context = HydraContext(config_loader=None, callbacks=callbacks)  # type: ignore[arg-type]
        ret = run_job(
            hydra_context=context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
        )
        callbacks.on_run_end(config=config, config_name=None, job_return=ret)
        return ret
    finally:
        hydra_config.cfg = previous
