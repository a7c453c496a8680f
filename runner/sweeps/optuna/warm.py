"""The ``n_jobs`` workers' forkserver, started as the sweep starts: :class:`StartWorkers`.

The Optuna sweeper forks its ``hydra.sweeper.n_jobs`` workers from a forkserver that imports
what a trial needs once (:func:`runner.sweeps.optuna._worker.start_forkserver`). Started by
the sweeper itself, the server's imports (3-4 s here) overlapped only the opening of the
study: the pool's first trial waited for them, and ``n_jobs=2`` lost most of its gain on a
30-trial logreg sweep (``benchmarks/bench_scale.py``). Hydra calls a callback's
``on_multirun_start`` before it instantiates the sweeper, at the first moment the composed
config is known; started there, the server imports beside this process's own start (MLflow,
the store, the sweep's parent run: 3 s here), and the sweeper's pool reuses it.

The callback is listed first in the runner's app (``conf/config.yaml``); any Hydra app may
list it too (docs/own-app.md). Without it the sweeper starts the server itself, as before.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.errors import RunnerError

__all__ = ["StartWorkers", "import_ahead", "preloads", "server_preloads", "uses_pool"]

log = logging.getLogger(__name__)

#: The sweeper whose ``n_jobs`` pool this starts (hydra_plugins/runner_optuna_sweeper).
SWEEPER = "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class StartWorkers(Callback):
    """Hydra callback: start the ``n_jobs`` workers' forkserver before the sweep opens."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the forkserver when the sweep is this project's Optuna sweep with a pool."""
        if not uses_pool(config):
            return
        from runner.sweeps.optuna import _worker

        _worker.start_forkserver(server_preloads(config))


def uses_pool(config: DictConfig) -> bool:
    """Whether ``config``'s sweep runs trials in a pool of ``n_jobs > 1`` worker processes:
    this project's Optuna sweeper, Hydra's basic launcher (any other launches workers)."""
    from runner.sweeps.optuna._launched import launcher_target

    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != SWEEPER:
        return False
    try:
        n_jobs = int(OmegaConf.select(config, "hydra.sweeper.n_jobs", default=1) or 1)
    except (ValueError, TypeError):  # the sweeper's own validation reports it
        return False
    return n_jobs > 1 and launcher_target(config) is None


def preloads(config: DictConfig) -> list[str]:
    """What every trial of ``config``'s sweep imports: the forkserver imports it once.

    Libraries and the runner's own modules only (none runs anything at import); the
    runner's app's lazy imports when the task is it, the MLflow stack and the tracking
    store's module when tracking. A module missing here is imported by each worker at its
    first trial (1.5-2 s here for matplotlib, GitPython, MLflow's pyfunc and Hydra's plugins).
    """
    modules = ["concurrent.futures.process", "cloudpickle", "optuna", "hydra.core.utils"]
    modules += ["hydra.core.singleton", "runner.sweeps.optuna._worker"]
    modules += ["runner.sweeps.hydra_job", "runner.trial"]
    modules += sorted(  # what this process already uses; Hydra's plugins, which a worker's
        # restore of Hydra's singletons discovers (imports) again
        name
        for name in sys.modules
        if name.startswith(("runner.", "hydra_plugins.", "hydra._internal.core_plugins."))
        and "__main__" not in name
    )
    from runner.tracking.session import enabled, is_runner_app, uri_of

    try:
        tracked = enabled(config)
    except RunnerError:  # a bad callback argument: the first trial reports it
        tracked = False
    if is_runner_app(config):
        modules += ["runner.app", "runner.data", "runner.metrics", "sklearn.metrics"]
        modules += ["sklearn.model_selection", "sklearn.datasets"]
        if tracked and OmegaConf.select(config, "tracking.log_model", default=False):
            modules += ["mlflow.sklearn", "mlflow.pyfunc"]
        if tracked and any(
            OmegaConf.select(config, f"tracking.{key}", default=False)
            for key in ("log_figures", "log_importances")
        ):  # drawn with matplotlib, rendered to PNG by Agg (runner.figures)
            modules += ["runner.figures", "matplotlib.figure", "matplotlib.backends.backend_agg"]
    if tracked:
        # GitPython: MLflow's git tags of every run (mlflow.tracking.context.git_context).
        modules += ["mlflow", "git", "runner.tracking.callback", "runner.tracking.job"]
        try:
            scheme = uri_of(config).split(":", 1)[0].split("+", 1)[0]
        except RunnerError:
            scheme = "sqlite"
        if scheme in ("http", "https"):
            modules.append("mlflow.store.tracking.rest_store")
        else:  # a database: SQLAlchemy's dialect of it (sqlite, postgresql, mysql, mssql)
            modules += ["mlflow.store.tracking.sqlalchemy_store", f"sqlalchemy.dialects.{scheme}"]
    return list(dict.fromkeys(modules))


#: Imported by the forkserver after its preloads: MLflow's first-use work, done once there.
SERVER_WARM_UP = "runner.sweeps.optuna._forkserver_warm"


def server_preloads(config: DictConfig) -> list[str]:
    """What the ``n_jobs`` workers' forkserver imports: :func:`preloads`, then, when the
    trials log models, :data:`SERVER_WARM_UP`, whose import does MLflow's first-use work
    once for every worker forked after it (as :func:`import_ahead` does for a launched
    worker)."""
    modules = preloads(config)
    return [*modules, SERVER_WARM_UP] if _logs_models(modules) else modules


def _logs_models(modules: list[str]) -> bool:
    return "mlflow.pyfunc" in modules  # preloaded exactly when the trials log models


def import_ahead(config: DictConfig) -> None:
    """Import now what a trial of ``config``'s sweep would import at its first use.

    For a worker job of a launched sweep (a process of its own, which no forkserver
    warmed), called before it asks its first trial: :func:`preloads`, the job's model and
    dataset modules, and, when its trials log models, MLflow's first-use set-up for them
    (:func:`runner.tracking.store.warm_up`). Best effort, as the forkserver's preloads are:
    whatever fails here fails again, and is reported, in the first trial.
    """
    from runner.sweeps.optuna._worker import import_quietly
    from runner.sweeps.optuna.setup import target_modules

    modules = preloads(config)
    import_quietly([*modules, *target_modules(config)])
    if _logs_models(modules):
        from runner.tracking.store import warm_up

        try:
            warm_up()
        except Exception as e:  # first-use work only: the trial does it again if need be
            log.debug("MLflow's warm-up failed: %s", e)
