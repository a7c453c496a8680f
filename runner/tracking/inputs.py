"""A job's training and validation data as MLflow dataset inputs (``mlflow.log_input``).

The task passes plain data (:class:`DataRecord`); this module builds MLflow's entities, so
the MLflow UI's Dataset column shows them and ``search_runs("dataset.name = 'iris'")``,
``dataset.context`` and ``dataset.digest`` filters find the runs.

MLflow keys a dataset by (name, digest) and keeps one input per dataset and run: the
training and validation parts must differ in digest, or the second is dropped. Each part's
MLflow digest is therefore its own content's (sha256 of its arrays, 32 hex digits: MLflow
allows 36), while the runner's digest of the whole data (``runner.dataset_digest``, what
replay compares) is in each input's profile (:data:`PROFILE_DIGEST`) beside the row count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CONTEXT_TAG", "PROFILE_DIGEST", "DataPart", "DataRecord", "dataset_inputs", "digest_of"]

#: MLflow's input tag naming what a dataset was used for.
CONTEXT_TAG = "mlflow.data.context"
#: The profile key holding the runner's digest of the whole data.
PROFILE_DIGEST = "runner_dataset_digest"


@dataclass(frozen=True)
class DataPart:
    """One part of the data: its context (``training``/``validation``) and arrays."""

    context: str
    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DataRecord:
    """What a job logs about its data (plain values, no MLflow types).

    Attributes:
        name: The dataset's name (``iris``).
        digest: The runner's digest of the whole data (``sha256:<hex>``).
        source: Where it came from: a file path, or a loader's name.
        source_type: ``local`` (a file) or ``code`` (a loader).
        feature_names: One per column of ``X``.
        target_name: The target column's name.
        task: ``classification`` or ``regression``.
        parts: The training and validation parts.
    """

    name: str
    digest: str
    source: str
    source_type: str
    feature_names: Sequence[str]
    target_name: str
    task: str
    parts: Sequence[DataPart] = field(default_factory=tuple)


def digest_of(X: np.ndarray, y: np.ndarray) -> str:
    """The MLflow digest of one part: its :func:`runner.data.array_digest`, 32 hex digits
    (MLflow keeps 36 characters of a digest)."""
    from runner.data import array_digest

    return array_digest(X, y).removeprefix("sha256:")[:32]


def _mlflow_type(dtype: np.dtype[Any]) -> str:
    if np.issubdtype(dtype, np.bool_):
        return "boolean"
    if np.issubdtype(dtype, np.integer):
        return "long"
    if np.issubdtype(dtype, np.floating):
        return "double"
    return "string"


def _schema(record: DataRecord, part: DataPart) -> str:
    from mlflow.types import ColSpec, Schema

    ftype = _mlflow_type(part.X.dtype)
    cols: list[Any] = [ColSpec(ftype, str(n)) for n in record.feature_names]
    cols.append(ColSpec(_mlflow_type(part.y.dtype), record.target_name))
    return json.dumps({"mlflow_colspec": Schema(cols).to_dict()})


def _source(record: DataRecord) -> str:
    if record.source_type == "local":
        from pathlib import Path

        return json.dumps({"uri": Path(record.source).resolve().as_uri()})
    return json.dumps({"tags": {"loader": record.source}})


def dataset_inputs(record: DataRecord) -> list[Any]:
    """MLflow ``DatasetInput`` entities, one per part, tagged with its context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    out = []
    for part in record.parts:
        profile: Mapping[str, Any] = {
            "num_rows": int(part.X.shape[0]),
            "num_features": int(part.X.shape[1]) if part.X.ndim > 1 else 1,
            "task": record.task,
            PROFILE_DIGEST: record.digest,
        }
        dataset = Dataset(
            name=record.name,
            digest=digest_of(part.X, part.y),
            source_type=record.source_type,
            source=_source(record),
            schema=_schema(record, part),
            profile=json.dumps(profile),
        )
        out.append(DatasetInput(dataset, [InputTag(CONTEXT_TAG, part.context)]))
    return out
