"""An Optuna sweep through a Hydra launcher: the worker jobs and what they share.

With ``hydra/launcher=<anything but basic>``, the sweep launches ``hydra.sweeper.n_workers``
jobs through that launcher (submitit on SLURM or locally, joblib, Ray). Each job is a
``runner.sweeps.optuna._core.WorkerTask``: the sweep loop of ``OptunaSweep`` on the shared
Optuna storage (Optuna's distributed pattern), asking for trials until the study
holds ``n_trials`` and running each trial's Hydra job inline. The task carries everything
it needs (the sweep's config, Hydra's context, the task function) in its own pickle, as
every launcher ships it (cloudpickle): nothing is read from the launching process's globals.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import contract
from runner.sweeps.optuna import storage as st

__all__ = [
    "WORKER_KEY",
    "WorkerAlive",
    "launcher_target",
    "live_workers",
    "worker_overrides",
    "workers_here",
]

log = logging.getLogger("runner.optuna_sweep")

#: The config key that marks a worker job (set by :func:`worker_overrides`): the MLflow
#: callback logs no run for the worker itself, only for the trials it runs.
WORKER_KEY = "hydra.sweeper.worker"

BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def launcher_target(config: DictConfig) -> str | None:
    """The chosen launcher's ``_target_``; None for Hydra's basic launcher (run inline)."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    if not target or str(target) == BASIC:
        return None
    return str(target)


def workers_here(config: DictConfig, n_workers: int) -> int:
    """How many of the sweep's ``n_workers`` workers run on this host at once.

    All of them under a launcher that runs its jobs here (joblib, submitit's local
    executor: :data:`runner.sweeps.optuna.storage.LOCAL_LAUNCHERS`); one under any other
    (a SLURM job or a Ray task has the cores it was given).
    """
    return n_workers if launcher_target(config) in st.LOCAL_LAUNCHERS else 1


def worker_overrides(fixed: list[str], index: int) -> list[str]:
    """The overrides of worker job ``index``: the sweep's fixed ones, the marker, its dir.

    The worker's own Hydra output (``.hydra/``, its log) goes under the sweep dir's
    ``.runner/workers/`` so it never shares a folder with a trial's job.
    """
    return [
        *fixed,
        f"{WORKER_KEY}={index}",
        f"hydra.sweep.subdir=.runner/workers/worker-{index}",
    ]


class WorkerAlive:
    """A daemon thread that records this worker's liveness in the study's system attrs.

    The launching process waits for the workers; a launcher that reports one dead worker
    before the others finish (submitit's ``results()`` raises at the first) would otherwise
    end the wait early. ``done`` is written on the way out.
    """

    def __init__(self, study: Any, interval: float) -> None:
        self.study = study
        self.key = contract.WORKER_ATTR_PREFIX + st.owner()
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runner-worker-alive", daemon=True)

    def _beat(self, value: Any) -> None:
        with contextlib.suppress(Exception):  # a DB blip: the next beat writes it
            self.study._storage.set_study_system_attr(self.study._study_id, self.key, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat(time.time())

    def __enter__(self) -> WorkerAlive:
        self._beat(time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        self._beat("done")


def live_workers(study: Any, stale_after: float) -> list[str]:
    """The workers (``host:pid``) that look alive: not done, and beating recently.

    A worker on this host whose process is gone is dead at once; any other one is dead once
    its last beat is older than ``stale_after`` seconds.
    """
    import socket

    attrs = study._storage.get_study_system_attrs(study._study_id)
    now, host = time.time(), socket.gethostname()
    alive = []
    for key, value in attrs.items():
        if not key.startswith(contract.WORKER_ATTR_PREFIX) or value == "done":
            continue
        who = key[len(contract.WORKER_ATTR_PREFIX) :]
        h, _, pid = who.rpartition(":")
        if h == host and pid.isdigit() and not st.pid_alive(int(pid)):
            continue
        if isinstance(value, int | float) and now - float(value) <= stale_after:
            alive.append(who)
    return alive
