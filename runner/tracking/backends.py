"""The ``backend`` config node: where runs go, read and checked in one place.

``conf/backend/<name>.yaml`` holds ``name``, ``enabled``, ``uri`` and, for database stores,
``artifact_root``. Credentials never come from a config: MLflow reads a server's credentials
from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``,
libpq reads PostgreSQL's from ``PGPASSWORD``, boto3 reads S3's from ``AWS_*``; a backend node
that holds one is refused before anything is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError
from runner.tracking.params import flatten
from runner.tracking.redact import is_secret_key
from runner.tracking.store import public_uri, resolve_uri

__all__ = ["Backend", "backend_of", "check_no_credentials"]

_ENV_HINT = {
    "http": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
    "https": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
    "postgresql": "PGPASSWORD (or ~/.pgpass)",
    "mysql": "the database client's own environment",
}


@dataclass(frozen=True)
class Backend:
    """A resolved backend: the store jobs log to."""

    name: str
    enabled: bool
    uri: str
    artifact_root: str | None = None


def check_no_credentials(node: DictConfig | None) -> None:
    """Refuse a backend config that holds credentials.

    Raises:
        ConfigError: A secret-looking key with a value, or a URI with credentials in it.
    """
    if node is None:
        return
    plain = OmegaConf.to_container(node, resolve=True)
    for path, value in flatten(plain, "backend"):
        if value in (None, "") or not isinstance(value, str | int | float):
            continue
        if is_secret_key(path.split(".", 1)[1]):
            raise ConfigError(
                f"{path} holds a credential; credentials are never read from configs (they "
                "would end up in config files, overrides and logs). Remove it and export the "
                "credential in the environment instead: "
                f"{_ENV_HINT['http']} for a tracking server, {_ENV_HINT['postgresql']} for "
                "PostgreSQL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3."
            )
        text = str(value)
        if "://" not in text:
            continue
        parsed = urlparse(text)
        scheme = parsed.scheme.split("+")[0]
        # A database URI may name its user (the password comes from the environment); a
        # tracking server's user is MLFLOW_TRACKING_USERNAME, so nothing belongs there.
        in_query = any(is_secret_key(k) for k, _ in parse_qsl(parsed.query))
        if (
            in_query
            or parsed.password is not None
            or (scheme in ("http", "https") and parsed.username)
        ):
            raise ConfigError(
                f"{path} = {public_uri(text)} has credentials in it; credentials are never "
                "read from configs. Remove them from the URI and export "
                f"{_ENV_HINT.get(scheme, 'them in the environment')} instead."
            )


def backend_of(config: DictConfig, launch_dir: Path) -> Backend:
    """The backend of a composed config, checked and with an absolute URI.

    Args:
        config: A composed config (a job's, or one composed by ``runner.server``).
        launch_dir: Where the user launched from (the default SQLite store lives there).
    """
    node = OmegaConf.select(config, "backend", default=None)
    check_no_credentials(node)
    name = str(OmegaConf.select(config, "backend.name", default="local"))
    enabled = bool(OmegaConf.select(config, "backend.enabled", default=False))
    root = OmegaConf.select(config, "backend.artifact_root", default=None)
    if not enabled:
        return Backend(name=name, enabled=False, uri="")
    uri = resolve_uri(OmegaConf.select(config, "backend.uri", default=None), launch_dir)
    return Backend(name=name, enabled=True, uri=uri, artifact_root=str(root) if root else None)
