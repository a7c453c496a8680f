"""The linear baseline for both tasks."""

from __future__ import annotations

from typing import Any

__all__ = ["linear_model"]


def linear_model(
    *, task: str, C: float = 1.0, max_iter: int = 1000, random_state: int | None = None
) -> Any:
    """Return scikit-learn's own linear estimator for ``task``, after a standard scaler.

    Logistic regression and ridge regression name their regularisation differently (``C``
    against ``alpha``), so one config cannot instantiate both directly; this factory maps the
    one knob onto both, with ridge's ``alpha = 1 / (2 C)`` (the same penalty scale). The
    scaler is what makes lbfgs converge on unscaled data such as wine.

    Args:
        task: ``classification`` (LogisticRegression) or ``regression`` (Ridge).
        C: Inverse regularisation strength.
        max_iter: Solver iteration cap.
        random_state: Seed for the solvers that use one.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if C <= 0:
        raise ValueError(f"C must be positive, got {C}; try model.C=1.0")
    if task == "classification":
        est: Any = LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)
    elif task == "regression":
        est = Ridge(alpha=1.0 / (2.0 * C), max_iter=max_iter, random_state=random_state)
    else:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    return make_pipeline(StandardScaler(), est)
