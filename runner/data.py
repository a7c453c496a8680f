"""Datasets: scikit-learn's built-ins, a synthetic generator, and any CSV or Parquet file.

Every loader returns a :class:`Dataset` already split into train and validation parts with a
seeded split (stratified for classification), plus a content digest that replay compares to
tell whether the data changed. Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.config import TASKS
from runner.errors import DataError

__all__ = ["BUILTIN", "Dataset", "array_digest", "load_builtin", "load_table", "make_synthetic"]

#: The datasets that ship inside scikit-learn, with their task.
BUILTIN: dict[str, str] = {
    "iris": "classification",
    "wine": "classification",
    "digits": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}


@dataclass
class Dataset:
    """A dataset split for one job.

    Attributes:
        name: Short name, used as the default experiment name.
        task: ``classification`` or ``regression``.
        X_train: Training features.
        X_val: Validation features.
        y_train: Training target.
        y_val: Validation target.
        feature_names: One name per feature column.
        digest: ``sha256:<hex>`` of the data before the split (or of the file's bytes).
        target_names: Class labels for classification, else empty.
        source: Where the data came from: the file read, or the loader that made it
            (``sklearn.datasets.load_iris``); logged as the MLflow dataset's source.
        target_name: The target column's name.
    """

    name: str
    task: str
    X_train: np.ndarray
    X_val: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    feature_names: list[str]
    digest: str
    target_names: list[str] = field(default_factory=list)
    source: str = ""
    target_name: str = "target"


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DataError(
            f"dataset.task is {task!r}; it must be one of {', '.join(TASKS)} "
            "(e.g. dataset.task=regression)."
        )


def _check_test_size(test_size: float) -> None:
    if not 0.0 < float(test_size) < 1.0:
        raise DataError(
            f"dataset.test_size is {test_size!r}; it must be a fraction between 0 and 1 "
            "(e.g. dataset.test_size=0.25)."
        )


def array_digest(X: np.ndarray, y: np.ndarray) -> str:
    """``sha256:<hex>`` of the arrays' dtypes, shapes and bytes (the data's identity)."""
    h = hashlib.sha256()
    for arr in (X, y):
        arr = np.ascontiguousarray(arr)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return f"sha256:{h.hexdigest()}"


def _split(
    *,
    name: str,
    task: str,
    X: np.ndarray,
    y: np.ndarray,
    feature_names: list[str],
    digest: str,
    test_size: float,
    seed: int,
    target_names: list[str] | None = None,
    source: str = "",
    target_name: str = "target",
) -> Dataset:
    from sklearn.model_selection import train_test_split

    stratify = y if task == "classification" else None
    try:
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, test_size=test_size, random_state=seed, stratify=stratify
        )
    except ValueError as e:
        raise DataError(
            f"dataset {name!r} cannot be split with test_size={test_size} ({e}). "
            "Use a larger dataset or another dataset.test_size."
        ) from e
    return Dataset(
        name=name,
        task=task,
        X_train=X_train,
        X_val=X_val,
        y_train=y_train,
        y_val=y_val,
        feature_names=feature_names,
        digest=digest,
        target_names=target_names or [],
        source=source,
        target_name=target_name,
    )


def load_builtin(*, name: str, task: str, test_size: float = 0.25, seed: int = 0) -> Dataset:
    """Load one of scikit-learn's bundled datasets (no download) and split it.

    Args:
        name: One of :data:`BUILTIN`.
        task: Must match the dataset's own task.
        test_size: Fraction held out for validation.
        seed: Seed of the split.
    """
    if name not in BUILTIN:
        raise DataError(
            f"unknown built-in dataset {name!r}; available: {', '.join(sorted(BUILTIN))}."
        )
    if task != BUILTIN[name]:
        raise DataError(
            f"dataset {name!r} is a {BUILTIN[name]} dataset, but dataset.task is {task!r}. "
            f"Drop the override or set dataset.task={BUILTIN[name]}."
        )
    _check_test_size(test_size)
    X, y, feature_names, target_names, digest = _read_builtin(name)
    return _split(
        name=name,
        task=task,
        X=X,
        y=y,
        feature_names=list(feature_names),
        digest=digest,
        test_size=test_size,
        seed=seed,
        target_names=list(target_names) if task == "classification" else None,
        source=f"sklearn.datasets.load_{name}",
    )


@functools.cache
def _read_builtin(
    name: str,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...], str]:
    # Read (and digest) once per process: a sweep's jobs share the process under the basic
    # launcher, and the split below copies the arrays, so sharing them is safe.
    import sklearn.datasets

    bunch: Any = getattr(sklearn.datasets, f"load_{name}")()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    X.setflags(write=False)
    y.setflags(write=False)
    names = getattr(bunch, "feature_names", None)
    features = (
        tuple(str(f) for f in names)
        if names is not None
        else tuple(f"x{i}" for i in range(X.shape[1]))
    )
    targets = tuple(str(t) for t in getattr(bunch, "target_names", []))
    return X, y, features, targets, array_digest(X, y)


def make_synthetic(
    *,
    name: str = "synthetic",
    task: str = "classification",
    n_samples: int = 1000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 2,
    noise: float = 0.1,
    test_size: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Generate a seeded synthetic dataset (``make_classification``/``make_regression``).

    Args:
        name: Dataset (and default experiment) name.
        task: ``classification`` or ``regression``.
        n_samples: Number of rows.
        n_features: Number of feature columns.
        n_informative: Number of informative features.
        n_classes: Classes (classification only).
        noise: Gaussian noise on the target (regression only).
        test_size: Fraction held out for validation.
        seed: Seed of the generator and of the split.
    """
    from sklearn.datasets import make_classification, make_regression

    _check_task(task)
    _check_test_size(test_size)
    if n_informative > n_features:
        raise DataError(
            f"dataset.n_informative={n_informative} exceeds dataset.n_features={n_features}; "
            "lower the first or raise the second."
        )
    try:
        if task == "classification":
            X, y = make_classification(
                n_samples=n_samples,
                n_features=n_features,
                n_informative=n_informative,
                n_redundant=0,
                n_classes=n_classes,
                random_state=seed,
            )
        else:
            X, y = make_regression(
                n_samples=n_samples,
                n_features=n_features,
                n_informative=n_informative,
                noise=noise,
                random_state=seed,
            )
    except ValueError as e:
        raise DataError(f"the synthetic dataset cannot be generated: {e}") from e
    return _split(
        name=name,
        task=task,
        X=X,
        y=y,
        feature_names=[f"x{i}" for i in range(n_features)],
        digest=array_digest(X, y),
        test_size=test_size,
        seed=seed,
        target_names=[str(c) for c in range(n_classes)] if task == "classification" else None,
        source=f"runner.data.make_synthetic(n_samples={n_samples}, n_features={n_features}, "
        f"seed={seed})",
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def load_table(
    *,
    path: str,
    target: str,
    name: str = "csv",
    task: str = "classification",
    test_size: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Load a CSV or Parquet file; every column but ``target`` is a feature.

    Non-numeric feature columns are one-hot encoded; rows with a missing target are an error
    rather than silently dropped.

    Args:
        path: File path (``.csv``, ``.parquet`` or ``.pq``), relative to the launch directory.
        target: Name of the target column.
        name: Dataset (and default experiment) name.
        task: ``classification`` or ``regression``.
        test_size: Fraction held out for validation.
        seed: Seed of the split.
    """
    import pandas as pd

    _check_task(task)
    _check_test_size(test_size)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"dataset.path {str(path)!r} does not exist (resolved to {file.resolve()}). "
            "Pass an existing CSV or Parquet file: dataset=csv dataset.path=data.csv "
            "dataset.target=<column>."
        )
    suffix = file.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(file)
        elif suffix in (".csv", ".txt", ".gz"):
            df = pd.read_csv(file)
        else:
            raise DataError(
                f"dataset.path {str(path)!r} has the suffix {suffix!r}; "
                "use a .csv or .parquet file."
            )
    except (ValueError, OSError) as e:
        raise DataError(f"dataset.path {str(path)!r} cannot be read: {e}") from e
    if target not in df.columns:
        raise DataError(
            f"dataset.target {target!r} is not a column of {str(path)!r}; its columns are: "
            f"{', '.join(map(str, df.columns))}. Set dataset.target=<column>."
        )
    if df[target].isna().any():
        raise DataError(
            f"dataset.target {target!r} has {int(df[target].isna().sum())} missing values in "
            f"{str(path)!r}; fill or drop those rows first."
        )
    features = pd.get_dummies(df.drop(columns=[target]), dtype=float)
    X = features.to_numpy(dtype=np.float64)
    y_raw = df[target]
    target_names: list[str] = []
    if task == "classification":
        if pd.api.types.is_float_dtype(y_raw) and y_raw.nunique() > 20:
            raise DataError(
                f"dataset.target {target!r} holds {y_raw.nunique()} distinct float values, "
                "which looks like a regression target; set dataset.task=regression."
            )
        codes, uniques = pd.factorize(y_raw, sort=True)
        y = codes.astype(np.int64)
        target_names = [str(u) for u in uniques]
    else:
        if not pd.api.types.is_numeric_dtype(y_raw):
            raise DataError(
                f"dataset.target {target!r} is not numeric, so it cannot be a regression "
                "target; set dataset.task=classification."
            )
        y = y_raw.to_numpy(dtype=np.float64)
    return _split(
        name=name,
        task=task,
        X=X,
        y=y,
        feature_names=[str(c) for c in features.columns],
        digest=_file_digest(file),
        test_size=test_size,
        seed=seed,
        target_names=target_names,
        source=str(file.resolve()),
        target_name=str(target),
    )
