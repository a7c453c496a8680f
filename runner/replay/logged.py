"""A logged run as ``runner.replay`` and ``runner.diff`` read it: the run and its config files.

Every failure here is a :class:`~runner.errors.RunnerError` that says what is missing and
what to do: an unreachable store, an unknown run id, a run without the config artifacts
(not logged by this runner), an artifact store that cannot be read.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError, TrackingError
from runner.tracking.store import public_uri

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "LoggedConfig",
    "RunNotFoundError",
    "fetch_config",
    "get_run",
]

#: The config artifacts of a job run (see the callback); only the first is required.
JOB_CONFIG = ".hydra/config.yaml"
HYDRA_CONFIG = ".hydra/hydra.yaml"
OVERRIDES = ".hydra/overrides.yaml"
RESOLVED_CONFIG = "config.yaml"
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class RunNotFoundError(RunnerError):
    """The run id is not in the tracking store."""


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run ``run_id``.

    Raises:
        RunNotFoundError: No such run in the store.
        TrackingError: The store failed to answer.
    """
    from runner.tracking import reader

    uri = public_uri(str(client.tracking_uri))
    try:
        run = reader.get_run(client, run_id)
    except reader.ReadError as e:
        raise TrackingError(f"reading run {run_id!r} from {uri} failed: {e}") from None
    if run is None:
        raise RunNotFoundError(
            f"run {run_id!r} does not exist in the tracking store {uri}. Check the id (the "
            "MLflow UI shows it on the run's page) or point --tracking-uri at the store "
            "that holds the run."
        )
    return run


@dataclass
class LoggedConfig:
    """The config files a job run logged, parsed (plain containers, interpolations kept).

    Attributes:
        job: ``.hydra/config.yaml``: the job config before resolution (``${...}`` kept).
        hydra: ``.hydra/hydra.yaml``'s ``hydra`` node, or None when it was not logged.
        overrides: ``.hydra/overrides.yaml``, or None when it was not logged.
        resolved: ``config.yaml``: the resolved job config, or None when it was not logged.
    """

    job: dict[str, Any]
    hydra: dict[str, Any] | None = None
    overrides: list[str] | None = None
    resolved: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def choices(self) -> dict[str, str] | None:
        """Hydra's ``runtime.choices`` of the job, or None without ``hydra.yaml``."""
        runtime = (self.hydra or {}).get("runtime") or {}
        choices = runtime.get("choices")
        return dict(choices) if isinstance(choices, dict) else None


def _load_yaml(text: str, what: str, run_id: str) -> Any:
    # OmegaConf's loader is PyYAML's safe loader (plus YAML 1.2 floats): no object tags.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except (OmegaConfBaseException, ValueError) as e:
        raise RunnerError(
            f"the {what} artifact of run {run_id} is not valid YAML ({e}); the run cannot be "
            "replayed from it."
        ) from None


def _artifact_paths(client: MlflowClient, run: Run, folder: str | None) -> set[str]:
    try:
        return {f.path for f in client.list_artifacts(run.info.run_id, folder)}
    except Exception as e:
        raise TrackingError(
            f"the artifact store of run {run.info.run_id} ({public_uri(run.info.artifact_uri)}) "
            f"cannot be reached: {type(e).__name__}: {e}. Check that it is up and that this "
            "machine has the credentials for it (e.g. MLFLOW_S3_ENDPOINT_URL and AWS_* for S3)."
        ) from None


def _download(client: MlflowClient, run: Run, present: set[str], files: dict[str, str]) -> None:
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="runner-replay-") as tmp:
        for name in (JOB_CONFIG, HYDRA_CONFIG, OVERRIDES, RESOLVED_CONFIG):
            if name not in present:
                continue
            try:
                local = client.download_artifacts(run_id, name, tmp)
            except Exception as e:
                raise TrackingError(
                    f"downloading {name} of run {run_id} from "
                    f"{public_uri(run.info.artifact_uri)} failed: {type(e).__name__}: {e}. "
                    "Check that the artifact store is up and readable from here."
                ) from None
            files[name] = Path(local).read_text(encoding="utf-8")


def fetch_config(client: MlflowClient, run: Run) -> LoggedConfig:
    """Download and parse the config artifacts of ``run``.

    Raises:
        RunnerError: The run has no ``.hydra/config.yaml`` (it was not logged by this runner).
        TrackingError: The artifact store cannot be read.
    """
    run_id = run.info.run_id
    present = _artifact_paths(client, run, ".hydra") | _artifact_paths(client, run, None)
    if JOB_CONFIG not in present:
        raise RunnerError(
            f"run {run_id} has no {JOB_CONFIG} artifact: it was not logged by "
            "`python -m runner` (or its artifacts were deleted), so its config cannot be "
            "rebuilt. Pick a run whose artifacts list shows .hydra/config.yaml."
        )
    files: dict[str, str] = {}
    # MLflow draws a progress bar per file otherwise (four bars for four small files).
    quiet = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        _download(client, run, present, files)
    finally:
        if quiet is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = quiet
    job = _load_yaml(files[JOB_CONFIG], JOB_CONFIG, run_id)
    if not isinstance(job, dict):
        raise RunnerError(f"the {JOB_CONFIG} artifact of run {run_id} is not a mapping.")
    hydra = _load_yaml(files[HYDRA_CONFIG], HYDRA_CONFIG, run_id) if HYDRA_CONFIG in files else None
    overrides = _load_yaml(files[OVERRIDES], OVERRIDES, run_id) if OVERRIDES in files else None
    resolved = (
        _load_yaml(files[RESOLVED_CONFIG], RESOLVED_CONFIG, run_id)
        if RESOLVED_CONFIG in files
        else None
    )
    return LoggedConfig(
        job=job,
        hydra=hydra.get("hydra") if isinstance(hydra, dict) else None,
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else None,
        resolved=resolved if isinstance(resolved, dict) else None,
        files=files,
    )
