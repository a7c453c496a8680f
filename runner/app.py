"""The task: instantiate the dataset and the model, fit, evaluate, log; return the objective.

``run(cfg)`` is plain and testable: it knows nothing of sweeps, and it logs only through
``runner.tracking.current()`` (a no-op when tracking is off or no callback started a run).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from typing import Any

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner import contract, threads, tracking, trial
from runner.config import register
from runner.data import Dataset
from runner.errors import ConfigError, RunnerError
from runner.seeding import seed_everything

__all__ = ["model_flavor", "run"]

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")


def _check_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(
            f"required config values are missing: {', '.join(missing)}. "
            f"Set them on the command line, e.g. `python -m runner {example}`."
        )
    directions = _as_list(cfg.direction)
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ConfigError(
            f"direction is {cfg.direction!r}; it must be one of {', '.join(DIRECTIONS)} "
            "(or a list of them, one per objective, for a multi-objective sweep)."
        )
    objectives = _as_list(cfg.objective)
    if len(directions) > 1 and len(directions) != len(objectives):
        raise ConfigError(
            f"direction has {len(directions)} entries but objective has {len(objectives)} "
            f"({objectives}); give one direction per objective."
        )


def _as_list(value: Any) -> list[str]:
    """A str-or-list config value as a list of str (objective, direction)."""
    if OmegaConf.is_list(value) or isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _instantiate(node: DictConfig, what: str) -> Any:
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, RunnerError):
            raise cause from None
        target = OmegaConf.select(node, "_target_", default="?")
        raise ConfigError(
            f"the {what} config cannot be instantiated ({target}): {cause or e}. "
            f"Check the {what}.* overrides against `python -m runner --cfg job`."
        ) from None


def model_flavor(model: Any) -> str | None:
    """The MLflow flavor that logs ``model``: ``xgboost``, ``pytorch`` or ``sklearn``."""
    module = type(model).__module__
    if module.startswith("xgboost"):
        return "xgboost"
    if hasattr(model, "module_") and type(model.module_).__module__.startswith("torch"):
        return "pytorch"
    if hasattr(model, "get_params") and hasattr(model, "predict"):
        return "sklearn"
    return None


def _epoch_end(job: tracking.NullRun) -> Any:
    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        job.log_metrics(metrics, step=epoch)
        if "val_loss" in metrics:
            # In an Optuna sweep with a pruner: report, and stop a hopeless trial here.
            trial.report(metrics["val_loss"], epoch, lower_is_better=True)
            if trial.should_prune():
                job.flush()
                raise trial.pruned(f"pruned at epoch {epoch} (val_loss={metrics['val_loss']:.4g})")

    return on_epoch_end


#: xgboost eval metrics where higher is better (the others are losses or errors).
_XGB_HIGHER = ("auc", "aucpr", "map", "ndcg", "pre")


def _xgb_pruning(model: Any) -> Any:
    """An xgboost callback reporting each round's first validation metric to the trial."""
    import xgboost

    class PruneRounds(xgboost.callback.TrainingCallback):
        pruned_at: int | None = None

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            for name, history in evals_log.get("validation_0", {}).items():
                higher = name.split("@")[0] in _XGB_HIGHER
                trial.report(float(history[-1]), epoch, lower_is_better=not higher)
                if trial.should_prune():
                    self.pruned_at = epoch
                    return True  # stop boosting
                break
            return False

    return PruneRounds()


def _fit_kwargs(model: Any, data: Dataset, job: tracking.NullRun) -> dict[str, Any]:
    params = inspect.signature(model.fit).parameters
    kwargs: dict[str, Any] = {}
    if "on_epoch_end" in params:  # our MLP: per-epoch losses as step metrics
        kwargs.update(X_val=data.X_val, y_val=data.y_val, on_epoch_end=_epoch_end(job))
    elif model_flavor(model) == "xgboost":
        kwargs.update(eval_set=[(data.X_val, data.y_val)], verbose=False)
    return kwargs


def _log_boosting_rounds(model: Any, job: tracking.NullRun) -> None:
    results = getattr(model, "evals_result", None)
    if results is None:
        return
    for metric, values in (results() or {}).get("validation_0", {}).items():
        for step, value in enumerate(values):
            job.log_metrics({f"boost_val_{metric}": value}, step=step)


def _log_artifacts(cfg: DictConfig, model: Any, data: Dataset, job: tracking.NullRun) -> None:
    from runner import figures

    if cfg.tracking.log_figures:
        pred = model.predict(data.X_val)
        if data.task == "classification":
            fig = figures.confusion_matrix_figure(data.y_val, pred, data.target_names)
            job.log_figure(fig, "figures/confusion_matrix.png")
        else:
            job.log_figure(figures.residual_figure(data.y_val, pred), "figures/residuals.png")
    if cfg.tracking.log_importances:
        values = figures.importances(model, data.feature_names)
        if values:
            import json

            job.log_files({"feature_importances.json": json.dumps(values, indent=2)})
            job.log_figure(figures.importance_figure(values), "figures/feature_importances.png")
    flavor = model_flavor(model)
    if cfg.tracking.log_model and flavor:
        example = data.X_val[:5].astype(np.float32 if flavor == "pytorch" else np.float64)
        job.log_model(model, flavor=flavor, input_example=example)


def _data_record(cfg: DictConfig, data: Dataset) -> Any:
    """What MLflow's dataset inputs record of ``data`` (``mlflow.log_input``)."""
    from pathlib import Path

    from runner.tracking.inputs import DataPart, DataRecord

    source = data.source or str(OmegaConf.select(cfg, "dataset._target_", default="") or "")
    is_file = bool(data.source) and Path(data.source).is_absolute() and Path(source).is_file()
    return DataRecord(
        name=data.name,
        digest=data.digest,
        source=source or "unknown",
        source_type="local" if is_file else "code",
        feature_names=data.feature_names,
        target_name=data.target_name,
        task=data.task,
        parts=(
            DataPart("training", data.X_train, data.y_train),
            DataPart("validation", data.X_val, data.y_val),
        ),
    )


def run(cfg: DictConfig) -> float | list[float]:
    """Run one job: fit ``cfg.model`` on ``cfg.dataset``, log, return the objective.

    Args:
        cfg: The composed job config (without the ``hydra`` node).

    Returns:
        The value of the metric named by ``cfg.objective``, for sweepers.

    Raises:
        RunnerError: Bad config or data, an objective the job did not produce, or a
            non-finite metric.
    """
    register()
    job = tracking.current()
    _check_config(cfg)
    seed_everything(int(cfg.seed))
    threads.limit(1)  # a SLURM job's allocation, where the node lets it run on every CPU

    data = _instantiate(cfg.dataset, "dataset")
    if not isinstance(data, Dataset):
        raise ConfigError(
            f"dataset._target_ ({OmegaConf.select(cfg, 'dataset._target_')}) returned a "
            f"{type(data).__name__}, not a runner.data.Dataset; point it at a dataset loader "
            "(runner.data.load_builtin, load_table, make_synthetic, or one of yours)."
        )
    job.set_tags({contract.DATASET_DIGEST: data.digest, contract.TASK: data.task})
    if job.enabled:
        job.log_data(_data_record(cfg, data))
    model = _instantiate(cfg.model, "model")
    if not (callable(getattr(model, "fit", None)) and callable(getattr(model, "predict", None))):
        raise ConfigError(
            f"model._target_ ({OmegaConf.select(cfg, 'model._target_')}) returned a "
            f"{type(model).__name__}, which has no fit/predict; point it at an estimator "
            "with scikit-learn's API (see conf/model/)."
        )
    flavor = model_flavor(model)
    log.info("fitting %s on %s (%d rows)", type(model).__name__, data.name, len(data.y_train))

    pruning = None
    handle = trial.current()
    if flavor == "xgboost" and handle is not None and handle.pruning:
        pruning = _xgb_pruning(model)
        model.set_params(callbacks=[pruning])
    start = time.perf_counter()
    with job.autolog(flavor if cfg.tracking.autolog else None):
        try:
            model.fit(data.X_train, data.y_train, **_fit_kwargs(model, data, job))
        except FloatingPointError as e:
            # Divergence is a bad hyperparameter, not a bug: say so without a traceback.
            raise RunnerError(f"{e}. The model was {type(model).__name__}.") from None
    fit_time = time.perf_counter() - start
    _log_boosting_rounds(model, job)
    if pruning is not None:
        model.set_params(callbacks=None)  # the logged model must not carry the callback
        if pruning.pruned_at is not None:
            raise trial.pruned(f"pruned at boosting round {pruning.pruned_at}")

    from runner.metrics import evaluate

    start = time.perf_counter()
    metrics = evaluate(model, data)
    metrics["fit_time_s"] = fit_time
    metrics["eval_time_s"] = time.perf_counter() - start
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    job.log_metrics({k: v for k, v in metrics.items() if k not in bad})
    if bad:
        raise RunnerError(
            f"the job produced non-finite metrics: "
            f"{', '.join(f'{k}={metrics[k]}' for k in bad)}. The model diverged or the data "
            "has NaN/inf values; lower the learning rate or clean the data."
        )
    objectives = _as_list(cfg.objective)
    for objective in objectives:
        if objective not in metrics:
            raise ConfigError(
                f"objective {objective!r} is not a metric this job produced; it produced: "
                f"{', '.join(sorted(metrics))}. Set objective=<one of those>."
            )
    if job.enabled:  # figures and model files are only worth building to log them
        _log_artifacts(cfg, model, data, job)
    for objective in objectives:
        log.info("%s = %.6g", objective, metrics[objective])
    if OmegaConf.is_list(cfg.objective):  # multi-objective sweeps: one value per objective
        return [float(metrics[o]) for o in objectives]
    return float(metrics[objectives[0]])
