"""The linear baseline for both tasks."""

from __future__ import annotations

from typing import Any

__all__ = ["linear_model"]


def linear_model(
    *, task: str, C: float = 1.0, max_iter: int = 1000, random_state: int | None = None
) -> Any:
    """Return scikit-learn's own linear estimator for ``task`` (not a wrapper).

    Logistic regression and ridge regression name their regularisation differently (``C``
    against ``alpha``), so one config cannot instantiate both directly; this factory maps the
    one knob onto both, with ridge's ``alpha = 1 / (2 C)`` (the same penalty scale).

    Args:
        task: ``classification`` (LogisticRegression) or ``regression`` (Ridge).
        C: Inverse regularisation strength.
        max_iter: Solver iteration cap.
        random_state: Seed for the solvers that use one.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    if C <= 0:
        raise ValueError(f"C must be positive, got {C}; try model.C=1.0")
    if task == "classification":
        return LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)
    if task == "regression":
        return Ridge(alpha=1.0 / (2.0 * C), max_iter=max_iter, random_state=random_state)
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
