"""Config helpers shared by every entry point: resolvers and the config location."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from runner.errors import ConfigError

__all__ = ["CONFIG_MODULE", "TASKS", "RunnerConfig", "TrackingConfig", "by_task", "register"]

#: Where the configs live once installed: conf/ ships as the ``runner.conf`` package.
CONFIG_MODULE = "pkg://runner.conf"

TASKS = ("classification", "regression")


def by_task(classification: Any, regression: Any, *, _root_: DictConfig) -> Any:
    """Pick the value that suits ``dataset.task`` (the ``${runner.by_task:a,b}`` resolver).

    Models interpolate their estimator class with it, and the root config its default
    objective and direction, so that ``model=rf dataset=diabetes`` needs no other change.
    """
    task = OmegaConf.select(_root_, "dataset.task", default=None)
    if task == "classification":
        return classification
    if task == "regression":
        return regression
    raise ConfigError(
        f"dataset.task is {task!r}; it must be one of {', '.join(TASKS)}. "
        "Set it on the command line, e.g. dataset.task=regression."
    )


@dataclass
class TrackingConfig:
    """Schema of the root ``tracking`` node (what the callback logs besides params)."""

    autolog: bool = False
    log_model: bool = True
    log_figures: bool = True
    log_importances: bool = True
    flush_every_s: float = 10.0
    #: What a job does when its tracking server does not answer: ``fail`` (within seconds,
    #: naming the URI) or ``buffer`` (log to a local store; ``python -m runner.sync`` replays).
    on_unavailable: str = "fail"
    #: MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) per job.
    system_metrics: bool = False
    system_metrics_interval: float = 10.0


@dataclass
class RunnerConfig:
    """Schema of the root keys we own; conf/config.yaml extends it.

    Typed, so that ``seed=abc`` or ``tracking.log_model=maybe`` fail at composition with the
    key and the value, before anything runs.
    """

    model: Any = MISSING
    dataset: Any = MISSING
    backend: Any = MISSING
    seed: int = 0
    lr: float = 0.1
    # A metric name, or a list of them for a multi-objective sweep (then `direction` too).
    objective: Any = MISSING
    direction: Any = MISSING
    experiment_name: str = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register() -> None:
    """Register the runner's resolvers and config schema (idempotent).

    Called by every entry point rather than at import time, so that importing the package has
    no side effects; job processes started by a launcher call it again on job start.
    """
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("runner.by_task"):
        OmegaConf.register_new_resolver("runner.by_task", by_task)
    store = ConfigStore.instance()
    # Storing converts the dataclass again (a few ms): every job calls this, three times.
    if "runner_schema.yaml" not in store.repo:
        store.store(name="runner_schema", node=RunnerConfig)
