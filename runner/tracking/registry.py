"""The model registry: register a run's logged model and point an alias at it.

MLflow 3 logs a model as a LoggedModel (``models:/<model_id>``) whose ``source_run_id`` is
the job's run; nothing of it is under the run's artifacts. :func:`register_best` finds that
model, creates a new version of a registered model from it and moves an alias
(``champion`` by default) onto the version. It is idempotent: when the alias already points
at a version made from the same run, nothing is written.

Names and aliases are checked with MLflow's own validators before anything is written, so a
refused alias never leaves a version behind without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_ALIAS",
    "Registered",
    "RegistryError",
    "check_names",
    "current_version",
    "describe",
    "find_logged_model",
    "register_best",
]

log = logging.getLogger(__name__)

#: The alias a registered best run gets unless told otherwise.
DEFAULT_ALIAS = "champion"

#: The artifact name the runner logs its models under (``runner.tracking.job``).
_MODEL_NAME = "model"


class RegistryError(TrackingError):
    """A model cannot be registered (a name MLflow refuses, a run without a model...)."""


@dataclass(frozen=True)
class Registered:
    """What :func:`register_best` did.

    Attributes:
        name: The registered model.
        version: The version the alias points at.
        alias: The alias.
        run_id: The run the version was made from.
        created: False when the alias already pointed at a version of this run (nothing
            was written).
    """

    name: str
    version: str
    alias: str
    run_id: str
    created: bool


def _message(e: BaseException) -> str:
    from runner.tracking.reader import mlflow_message

    return mlflow_message(e)


def _error_code(e: BaseException) -> str:
    return str(getattr(e, "error_code", ""))


def check_names(name: str, alias: str) -> None:
    """MLflow's own checks, run before any write (the stores run the same ones)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
        _validate_model_name,
    )

    try:
        _validate_model_name(name)
    except MlflowException as e:
        raise RegistryError(
            f"MLflow refuses the registered model name {name!r}: {_message(e)} "
            "Pick another name (e.g. --register-best iris-classifier)."
        ) from None
    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as e:
        raise RegistryError(
            f"MLflow refuses the alias {alias!r}: {_message(e)} "
            "Pick another alias (e.g. --alias champion)."
        ) from None


def find_logged_model(client: MlflowClient, run: Any) -> Any:
    """The LoggedModel the run ``run`` logged (the one named ``model``, else the latest).

    Raises:
        RegistryError: The run logged no model.
    """
    from runner.tracking.reader import paged

    run_id = run.info.run_id
    models = paged(
        client.search_logged_models,
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
    )
    if not models:
        raise RegistryError(
            f"run {run_id} ({run.info.run_name}) has no logged model to register. The runner "
            "logs one unless tracking.log_model=false: run the job again with "
            "tracking.log_model=true, or register another run."
        )
    named = [m for m in models if m.name == _MODEL_NAME] or models
    return max(named, key=lambda m: m.creation_timestamp or 0)


def current_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The version ``alias`` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for the block.

    MLflow's SQL registry store resolves a ``models:/<model_id>`` source through a new
    ``MlflowClient()`` on the global URI, not the client's own (a TODO in
    ``mlflow/store/model_registry/sqlalchemy_store.py``, ``create_model_version``): a
    command with ``--tracking-uri`` would look for the model in another store.
    """
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]
        # set_tracking_uri writes (or, for None, removes) the variable: put it back as it was.
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def register_best(
    client: MlflowClient, run_id: str, name: str, *, alias: str = DEFAULT_ALIAS
) -> Registered:
    """Register the logged model of run ``run_id`` as a new version of ``name``; alias it.

    The registered model is created when missing. When ``alias`` already points at a
    version made from this run, nothing changes (``created=False``).

    Args:
        client: An ``MlflowClient`` on the store (SQL store or tracking server).
        run_id: The run whose model is registered (e.g. the run tagged best).
        name: The registered model's name.
        alias: The alias moved onto the new version.

    Returns:
        The version the alias points at now.

    Raises:
        RegistryError: MLflow refuses the name or the alias, the run does not exist, or it
            logged no model.
    """
    from mlflow.exceptions import MlflowException

    from runner.tracking.reader import require_run

    check_names(name, alias)
    run = require_run(
        client,
        run_id,
        error=RegistryError,
        message=(
            f"run {run_id!r} is not in this tracking store; pass the id of a run that "
            "logged a model (e.g. the run tagged runner.best=true)."
        ),
    )
    current = current_version(client, name, alias)
    if current is not None and current.run_id == run_id:
        return Registered(name, str(current.version), alias, run_id, created=False)
    model = find_logged_model(client, run)
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if _error_code(e) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        with _global_uri(client.tracking_uri):
            version = client.create_model_version(
                name=name,
                source=f"models:/{model.model_id}",
                run_id=run_id,
                model_id=model.model_id,
            )
        client.set_registered_model_alias(name, alias, str(version.version))
    except MlflowException as e:
        raise RegistryError(
            f"registering run {run_id}'s model as {name!r} (alias {alias!r}) failed: {_message(e)}"
        ) from None
    log.info(
        "registered %s version %s (alias %s) from run %s", name, version.version, alias, run_id
    )
    return Registered(name, str(version.version), alias, run_id, created=True)


def describe(reg: Registered) -> str:
    """One line for the terminal: what :func:`register_best` did."""
    if reg.created:
        return (
            f"registered run {reg.run_id} as {reg.name} version {reg.version}; "
            f"alias {reg.alias!r} points at it (models:/{reg.name}@{reg.alias})"
        )
    return (
        f"{reg.name}@{reg.alias} already is version {reg.version}, from run {reg.run_id}: "
        "nothing registered"
    )
