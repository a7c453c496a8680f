"""The task function in-process: ``run(cfg)`` with tracking off (no callback, no run)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.app import run
from runner.errors import RunnerError
from tests.helpers import compose_cfg

FAST = {
    "logreg": [],
    "rf": ["model.n_estimators=10"],
    "xgb": ["model.n_estimators=10"],
    "mlp": ["model.epochs=5"],
}


@pytest.mark.parametrize("model", sorted(FAST))
@pytest.mark.parametrize("dataset", ["wine", "diabetes"])
def test_run_returns_the_objective(model: str, dataset: str) -> None:
    value = run(compose_cfg([f"model={model}", f"dataset={dataset}", *FAST[model]]))
    assert math.isfinite(value)
    if dataset == "wine":
        assert 0.0 <= value <= 1.0
    else:
        assert value > 0  # val_rmse


def test_run_is_deterministic() -> None:
    cfg = compose_cfg(["model=mlp", "model.epochs=5", "dataset=iris"])
    assert run(cfg) == run(cfg)


class NaNRegressor:
    """A user model that predicts NaN: its metrics are not finite."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> NaNRegressor:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), np.nan)


def _with_model(overrides: list[str], target: str):  # type: ignore[no-untyped-def]
    cfg = compose_cfg(overrides)
    OmegaConf.update(cfg, "model", {"_target_": target}, merge=False, force_add=True)
    return cfg


def test_non_finite_metrics_are_an_error() -> None:
    cfg = _with_model(["dataset=diabetes"], f"{__name__}.NaNRegressor")
    with pytest.raises(RunnerError, match=r"non-finite metrics: .*val_rmse=nan"):
        run(cfg)


def test_unknown_objective_lists_the_metrics() -> None:
    with pytest.raises(RunnerError, match=r"objective 'val_auc' .* produced: .*val_accuracy"):
        run(compose_cfg(["objective=val_auc"]))


def test_missing_csv_values_are_named() -> None:
    with pytest.raises(RunnerError, match=r"missing: dataset.path, dataset.target"):
        run(compose_cfg(["dataset=csv"]))


def test_csv_path_that_does_not_exist() -> None:
    with pytest.raises(RunnerError, match=r"dataset.path 'nope.csv' does not exist"):
        run(compose_cfg(["dataset=csv", "dataset.path=nope.csv", "dataset.target=y"]))


def test_csv_without_the_target_column(workdir: Path) -> None:
    (workdir / "d.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(RunnerError, match=r"'label' is not a column .* columns are: a, b"):
        run(compose_cfg(["dataset=csv", "dataset.path=d.csv", "dataset.target=label"]))


def test_parquet_regression(workdir: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    pd.DataFrame(
        {"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "y": x @ [1.0, 2.0, 0.5]}
    ).to_parquet(workdir / "d.parquet")
    value = run(
        compose_cfg(
            ["dataset=csv", "dataset.path=d.parquet", "dataset.target=y", "dataset.task=regression"]
        )
    )
    assert value < 0.5  # a linear target: ridge fits it closely


def test_task_mismatch_is_explained() -> None:
    with pytest.raises(RunnerError, match=r"'iris' is a classification dataset"):
        run(compose_cfg(["dataset.task=regression"]))


def test_bad_model_argument_names_the_target() -> None:
    with pytest.raises(RunnerError, match=r"model config cannot be instantiated"):
        run(compose_cfg(["model=rf", "+model.no_such_arg=1"]))


def test_bad_direction() -> None:
    with pytest.raises(RunnerError, match=r"direction is 'up'"):
        run(compose_cfg(["direction=up"]))
