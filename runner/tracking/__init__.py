"""The MLflow side of the runner: the callback, params, redaction, provenance, the store.

Nothing here imports MLflow until tracking is actually used.

Inside a task (any Hydra app with the MLflow callback), ``from runner import tracking`` gives
a small logging API onto the job's run: :func:`log_metrics`, :func:`log_params`,
:func:`set_tags`, :func:`log_artifact`, :func:`log_figure`, :func:`log_model`. Everything
goes through the job's batched store (sent in few requests, redacted on the way); outside a
tracked job every call does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.tracking.job import JobRun, NullRun

__all__ = [
    "JobRun",
    "NullRun",
    "current",
    "log_artifact",
    "log_figure",
    "log_metrics",
    "log_model",
    "log_params",
    "set_tags",
]


def current() -> JobRun | NullRun:
    """The run of the job in progress (a :class:`NullRun` when tracking is off).

    Raises:
        RunnerError: The callback could not start the job's run (e.g. the store is down).
    """
    from runner.tracking.session import state

    return state.current()


def log_metrics(metrics: Mapping[str, float], *, step: int | None = None) -> None:
    """Log metrics (at ``step``, e.g. an epoch; batched, pushed at least every 10 s).

    Args:
        metrics: ``name -> value``.
        step: The step of a per-epoch metric; None for a final value.
    """
    current().log_metrics(metrics, step=step)


def log_params(params: Mapping[str, Any]) -> None:
    """Log params beside the config's (values as strings; a key may be logged once)."""
    current().log_params(params)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the job's run."""
    current().set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, name: str | None = None) -> None:
    """Log a local file as an artifact of the job's run (under ``name``, default its name).

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    run = current()
    if not run.enabled:
        return
    file = Path(path)
    run.log_files({name or file.name: file.read_bytes()})


def log_figure(figure: Any, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact ``name`` (e.g. ``plots/loss.png``)."""
    current().log_figure(figure, name)


def log_model(model: Any, *, flavor: str, input_example: Any = None) -> None:
    """Log a fitted model with its MLflow flavor (``sklearn``, ``xgboost``, ``pytorch``)."""
    current().log_model(model, flavor=flavor, input_example=input_example)
