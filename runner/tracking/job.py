"""What a running job logs through: :class:`JobRun`, or :class:`NullRun` when tracking is off.

The task (``runner.app.run``) only ever sees this small surface; it never imports MLflow.
Step metrics are buffered and sent with ``log_batch``: one ``log_metric`` call costs about
10 ms on SQLite here, so 10,000 points one by one take 100 s against about 2 s batched.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from runner import contract, interrupts
from runner.tracking.store import Store

if TYPE_CHECKING:
    from runner.tracking.inputs import DataRecord

__all__ = ["JobRun", "NullRun", "system_metrics_interval"]

log = logging.getLogger(__name__)


def system_metrics_interval(config: Any) -> float | None:
    """``tracking.system_metrics_interval`` when ``tracking.system_metrics`` is on, else None.

    Raises:
        ConfigError: The interval is not a positive number of seconds.
    """
    from omegaconf import OmegaConf

    from runner.errors import ConfigError

    if not OmegaConf.select(config, "tracking.system_metrics", default=False):
        return None
    value = OmegaConf.select(config, "tracking.system_metrics_interval", default=10.0)
    try:
        interval = float(value)
    except (TypeError, ValueError):
        interval = float("nan")
    if not interval > 0:
        raise ConfigError(
            f"tracking.system_metrics_interval is {value!r}; it must be a positive number of "
            "seconds (e.g. tracking.system_metrics_interval=10)."
        )
    return interval


class NullRun:
    """Tracking off: every call is a no-op."""

    enabled = False
    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        """Do nothing."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Do nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_files(self, files: Mapping[str, str | bytes]) -> None:
        """Do nothing."""

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Do nothing."""

    def log_model(self, model: Any, *, flavor: str, input_example: Any) -> None:
        """Do nothing."""

    def log_data(self, record: DataRecord) -> None:
        """Do nothing."""

    @contextlib.contextmanager
    def autolog(self, flavor: str | None) -> Iterator[None]:
        """Do nothing."""
        yield

    def flush(self) -> None:
        """Do nothing."""


class JobRun(NullRun):
    """The MLflow run of one job.

    Args:
        store: Where the run lives.
        run_id: The run, already created (and activated as the fluent run).
        flush_every_s: Step metrics are pushed at least this often while a job runs.
    """

    enabled = True
    run_id: str

    def __init__(self, store: Store, run_id: str, *, flush_every_s: float = 10.0) -> None:
        self.store = store
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self._pending: list[tuple[str, float, int, int]] = []
        # Files and figures are sent together when the run ends: one parallel upload
        # instead of a round trip each (see Store.log_files).
        self._files: dict[str, str | bytes] = {}
        self._tags: dict[str, str] = {}
        self._params: dict[str, str] = {}
        self._model_id: str | None = None
        self._data: DataRecord | None = None
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        """Queue metrics (at ``step``, or 0); they are sent in batches.

        Step metrics are pushed at least every ``flush_every_s`` while a job trains; final
        metrics (no step) and tags wait for the end of the run, where they go in one request,
        linked to the run's logged model. Logging them before the model would make MLflow's
        ``log_model`` fetch every metric's history to link it: 12 round trips through a
        tracking server instead of none.
        """
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self._pending.append((key, float(value), step or 0, ts))
        if step is not None and time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Send every queued metric and tag now (one request for a job's usual few)."""
        if self._pending or self._tags or self._params:
            pending, self._pending = self._pending, []
            tags, self._tags = self._tags, {}
            params, self._params = self._params, {}
            self.store.log_batch(
                self.run_id, metrics=pending, params=params, tags=tags, model_id=self._model_id
            )
        self._last_flush = time.monotonic()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Queue tags; they are sent with the next batch of metrics."""
        self._tags.update({k: str(v) for k, v in tags.items()})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Queue params (values as strings); sent with the next batch, redacted there."""
        from runner.tracking.params import stringify

        self._params.update({str(k): stringify(v) for k, v in params.items()})

    def log_files(self, files: Mapping[str, str | bytes]) -> None:
        """Log in-memory files as artifacts (``path -> content``), sent when the run ends."""
        self._files.update(files)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure as a PNG (rendered now, sent when the run ends)."""
        import io

        buf = io.BytesIO()
        figure.savefig(buf, format="png")
        self._files[artifact_file] = buf.getvalue()

    def log_data(self, record: DataRecord) -> None:
        """Log the job's training and validation data as MLflow dataset inputs.

        Sent when the run ends, in the same round of requests as the files: a job that
        fails in its fit still records the data it was given.
        """
        self._data = record

    def flush_data(self) -> None:
        """Send the queued dataset inputs now."""
        if self._data is not None:
            from runner.tracking.inputs import dataset_inputs

            record, self._data = self._data, None
            self.store.log_inputs(self.run_id, dataset_inputs(record))

    def flush_files(self) -> None:
        """Send every queued file now."""
        if self._files:
            files, self._files = self._files, {}
            self.store.log_files(self.run_id, files)

    @interrupts.fenced
    def log_model(self, model: Any, *, flavor: str, input_example: Any) -> None:
        """Log the fitted model with its MLflow flavor, a signature and an input example.

        The pip requirements are the flavor's pinned defaults: letting MLflow infer them
        starts a subprocess that costs seconds per run.
        """
        import importlib

        module = importlib.import_module(f"mlflow.{flavor}")
        kwargs: dict[str, Any] = {
            "name": "model",
            "input_example": input_example,
            "pip_requirements": module.get_default_pip_requirements(),
        }
        if flavor == "pytorch":
            # The runner's MLP wraps its torch module; a plain nn.Module is logged as it is.
            info = module.log_model(getattr(model, "module_", model), **kwargs)
        elif flavor == "xgboost":
            info = module.log_model(model, model_format="ubj", **kwargs)
        else:
            # MLflow's default `skops` format imports skops' trusted-type registry, which
            # walks every scikit-learn estimator and imports torch: 5 s per job here, and
            # torch in a job that never chose it. cloudpickle is what MLflow used before.
            info = module.log_model(model, serialization_format="cloudpickle", **kwargs)
        self._model_id = getattr(info, "model_id", None)

    @contextlib.contextmanager
    def autolog(self, flavor: str | None) -> Iterator[None]:
        """Enable MLflow's sklearn or xgboost autolog around a fit (other flavors: no-op).

        xgboost's autolog logs the booster's params under their own names, one of them
        ``objective`` (``multi:softprob``), which the runner's root ``objective`` param
        (``val_accuracy``) already holds: MLflow params are immutable, so that batch would
        fail and every autologged param be lost. Its params go under ``xgboost.`` instead
        (``xgboost.objective``), see :func:`_prefixed_autolog_params`.
        """
        if flavor not in ("sklearn", "xgboost"):
            yield
            return
        import importlib

        module: Any = importlib.import_module(f"mlflow.{flavor}")
        # Autolog's own writes, made inside the fit, are MLflow's and not fenced: a signal
        # there is a kill of the run's autologged part, like any in the user's code.
        with interrupts.held():
            module.autolog(
                log_models=False, log_datasets=False, log_input_examples=False, silent=True
            )
        try:
            if flavor == "xgboost":
                with _prefixed_autolog_params("xgboost."):
                    yield
            else:
                yield
        finally:
            with interrupts.held():
                module.autolog(disable=True)

    def finish(self, status: str, *, error: BaseException | None = None) -> None:
        """Flush, record the error (if any) and end the run with ``status``.

        Ctrl-C or SIGTERM waits until the run is ended: an interrupt inside ``end_run``
        would leave it RUNNING, with nobody left to end it.
        """
        with interrupts.held():
            try:
                if error is not None:  # sent with the final batch of metrics and tags
                    self._tags[contract.ERROR] = _describe(error)
                self.flush()
                self.flush_data()
                self.flush_files()
            finally:
                self.store.end_run(self.run_id, status)


@contextlib.contextmanager
def _prefixed_autolog_params(prefix: str) -> Iterator[None]:
    """Prefix the keys of the params MLflow's autolog logs, for the block.

    MLflow's xgboost autolog has no switch for its params (``mlflow.xgboost.autolog`` takes
    no ``log_params``); both its ``xgboost.train`` patch and the scikit-learn estimator
    patch it reuses enqueue them through ``MlflowAutologgingQueueingClient.log_params``,
    which this wraps. tests/test_mlflow_features.py fails if an MLflow upgrade moves it.
    """
    from mlflow.utils.autologging_utils.client import MlflowAutologgingQueueingClient as Q

    original = Q.log_params

    def log_params(self: Any, run_id: Any, params: Mapping[str, Any]) -> None:
        original(self, run_id, {f"{prefix}{k}": v for k, v in params.items()})

    Q.log_params = log_params  # type: ignore[method-assign]
    try:
        yield
    finally:
        Q.log_params = original  # type: ignore[method-assign]


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
