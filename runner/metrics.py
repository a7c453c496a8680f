"""Task-appropriate metrics of a fitted estimator."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["evaluate"]


def _classification(model: Any, X: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    pred = model.predict(X)
    out = {
        f"{prefix}_accuracy": float(accuracy_score(y, pred)),
        f"{prefix}_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X), dtype=float)
        if not np.isfinite(proba).all():
            out[f"{prefix}_log_loss"] = float("nan")
            return out
        # float32 probabilities (xgboost, torch) miss summing to one by more than sklearn's
        # log_loss tolerates; renormalise in float64.
        proba = proba / proba.sum(axis=1, keepdims=True)
        classes = getattr(model, "classes_", np.arange(proba.shape[1]))
        out[f"{prefix}_log_loss"] = float(log_loss(y, proba, labels=classes))
        # ROC-AUC is defined only when every class occurs in y.
        if len(np.unique(y)) == len(classes) and len(classes) > 1:
            if len(classes) == 2:
                out[f"{prefix}_roc_auc"] = float(roc_auc_score(y, proba[:, 1]))
            else:
                out[f"{prefix}_roc_auc"] = float(
                    roc_auc_score(y, proba, multi_class="ovr", labels=classes)
                )
    return out


def _regression(model: Any, X: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = np.asarray(model.predict(X), dtype=float)
    if not np.isfinite(pred).all():
        # sklearn refuses NaN input; report the metrics as NaN and let the caller say so.
        return {f"{prefix}_{k}": float("nan") for k in ("rmse", "mae", "r2")}
    return {
        f"{prefix}_rmse": float(np.sqrt(mean_squared_error(y, pred))),
        f"{prefix}_mae": float(mean_absolute_error(y, pred)),
        f"{prefix}_r2": float(r2_score(y, pred)),
    }


def evaluate(model: Any, data: Any) -> dict[str, float]:
    """``train_*`` and ``val_*`` metrics of ``model`` on ``data`` (a :class:`Dataset`).

    Classification: accuracy, macro F1, log-loss and ROC-AUC (where the model gives
    probabilities and AUC is defined). Regression: RMSE, MAE, R2.
    """
    fn = _classification if data.task == "classification" else _regression
    return {
        **fn(model, data.X_train, data.y_train, "train"),
        **fn(model, data.X_val, data.y_val, "val"),
    }
