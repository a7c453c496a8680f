"""The Launcher class Hydra instantiates for ``hydra/launcher=ray``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _plain(node: Any) -> dict[str, Any]:
    """A plain dict of a config node (Hydra passes ``DictConfig``s; Ray wants dicts)."""
    if node is None:
        return {}
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


class RayLauncher(Launcher):
    """Runs each job of a batch as a Ray remote task, on a local or an existing cluster.

    Args:
        address: ``None`` to start a local cluster in this process, ``"auto"``, ``"host:port"``
            or ``"ray://host:port"`` for an existing one.
        num_cpus: CPUs each job reserves.
        num_gpus: GPUs each job reserves.
        resources: Custom resources each job reserves.
        max_retries: Ray's retries of a job whose worker died (0: none).
        remote: More options of each task (``ray.remote(...).options``).
        init: Keyword arguments of ``ray.init``.
        cancel_wait_s: On an interrupt, seconds the cancelled jobs get to end their runs
            before they are force-cancelled.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        max_retries: int = 0,
        remote: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
        cancel_wait_s: float = 10.0,
    ) -> None:
        self.address = address
        self.task_options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "max_retries": max_retries,
            **({"resources": _plain(resources)} if resources else {}),
            **_plain(remote),
        }
        self.init: dict[str, Any] = _plain(init)
        if cancel_wait_s < 0:
            from runner.errors import ConfigError

            raise ConfigError(
                f"hydra.launcher.cancel_wait_s={cancel_wait_s:g} is negative: give the seconds "
                "the cancelled jobs of an interrupted sweep get to end their runs (0 or more; "
                "default 10)."
            )
        self.cancel_wait_s = float(cancel_wait_s)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        #: Set by :meth:`cancel`: the batch waited for in another thread is cancelled.
        self.cancelled = threading.Event()

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        """Keep what each job needs; Ray is not touched before the first batch."""
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def cancel(self) -> None:
        """Cancel the batch that a thread other than the main one waits for.

        For the Optuna sweeper's launch thread, which the main thread's interrupt never
        reaches: the thread cancels its jobs (their runs ended KILLED, as on an interrupt)
        and returns, so that the interrupted sweep can void what they left RUNNING.
        """
        self.cancelled.set()

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Run the batch on Ray; the jobs' returns in the order of ``job_overrides``."""
        from hydra_plugins.runner_ray_launcher import _core

        return _core.launch(
            launcher=self, job_overrides=job_overrides, initial_job_idx=initial_job_idx
        )
