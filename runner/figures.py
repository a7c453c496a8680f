"""The figures a job logs: confusion matrix, residual plot, feature importances.

Built on ``matplotlib.figure.Figure`` directly (no pyplot), so no GUI backend is touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["confusion_matrix_figure", "importance_figure", "importances", "residual_figure"]


def confusion_matrix_figure(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> Any:
    """A confusion-matrix heatmap with counts."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    classes = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    names = [labels[int(c)] if labels and 0 <= int(c) < len(labels) else str(c) for c in classes]
    size = max(4.0, 0.5 * len(classes) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    ax.set_title("confusion matrix (validation)")
    fig.tight_layout()
    return fig


def residual_figure(y_true: np.ndarray, y_pred: np.ndarray) -> Any:
    """Residuals against predictions."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.scatter(y_pred, np.asarray(y_true) - np.asarray(y_pred), s=12, alpha=0.7)
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (true - predicted)")
    ax.set_title("residuals (validation)")
    fig.tight_layout()
    return fig


def importances(model: Any, feature_names: list[str]) -> dict[str, float] | None:
    """Feature importances (``feature_importances_``) or mean absolute coefficients."""
    if hasattr(model, "steps"):  # a Pipeline: the estimator is its last step
        model = model.steps[-1][1]
    values = getattr(model, "feature_importances_", None)
    if values is None and getattr(model, "coef_", None) is not None:
        coef = np.atleast_2d(np.asarray(model.coef_, dtype=float))
        values = np.abs(coef).mean(axis=0)
    if values is None:
        return None
    values = np.asarray(values, dtype=float).ravel()
    if len(values) != len(feature_names):
        return None
    return dict(zip(feature_names, (float(v) for v in values), strict=True))


def importance_figure(values: dict[str, float], *, top: int = 20) -> Any:
    """A horizontal bar chart of the ``top`` largest importances."""
    from matplotlib.figure import Figure

    items = sorted(values.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig = Figure(figsize=(6, max(2.5, 0.3 * len(items) + 1)))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("importance")
    ax.set_title("feature importances")
    fig.tight_layout()
    return fig
