"""The MLflow callback's own settings: its arguments under ``hydra.callbacks.<name>``.

The callback works in any Hydra app, where the runner's config keys (``backend``,
``experiment_name``, ``tracking.*``) do not exist; its settings are then the callback's
arguments. They are read from the composed config itself (not from the callback object), so
every process of a sweep (a launcher's workers receive pickled callbacks) and the Optuna
sweeper see the same ones. In the runner's own app, its config keys win.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError

__all__ = ["CALLBACK_TARGET", "Settings", "experiment_of", "settings_of"]

#: The callback's ``_target_``.
CALLBACK_TARGET = "runner.tracking.callback.MLflowCallback"


@dataclass(frozen=True)
class Settings:
    """The callback's arguments (see the README's "Use it in your own Hydra app").

    Attributes:
        tracking_uri: Where runs go; default ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///<launch dir>/mlflow.db``; a relative SQLite path is taken from the
            launch directory, never from a job's working directory.
        experiment_name: The MLflow experiment; default the app's job name.
        exclude: Config keys (dotted; a key excludes everything under it) left out of params.
        secret_keys: Extra regular expressions; a config key matching one is a secret.
        log_return_value: Whether the task's return value becomes metrics of its run.
    """

    tracking_uri: str | None = None
    experiment_name: str | None = None
    exclude: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = ()
    log_return_value: bool = True

    @classmethod
    def make(cls, args: Mapping[str, Any], *, where: str = "the MLflow callback") -> Settings:
        """Validated settings from the callback's arguments.

        Raises:
            ConfigError: An unknown argument, or a value of the wrong type (the message
                names it and lists the arguments).
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ConfigError(
                f"{where} got unknown argument(s) {', '.join(unknown)}; its arguments are "
                f'{", ".join(known)} (see the README\'s "Use it in your own Hydra app").'
            )
        values: dict[str, Any] = {}
        for name, value in args.items():
            if name in ("tracking_uri", "experiment_name"):
                if value is not None and not isinstance(value, str):
                    raise ConfigError(f"{where}: {name} is {value!r}; it must be a string.")
                values[name] = value or None
            elif name in ("exclude", "secret_keys"):
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, Sequence) or not all(isinstance(v, str) for v in items):
                    raise ConfigError(
                        f"{where}: {name} is {value!r}; it must be a list of strings."
                    )
                values[name] = tuple(items)
            elif name == "log_return_value":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: {name} is {value!r}; it must be true or false.")
                values[name] = value
        for pattern in values.get("secret_keys", ()):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{where}: secret_keys holds {pattern!r}, not a regular expression ({e})."
                ) from None
        return cls(**values)

    def uri(self) -> str | None:
        """The configured tracking URI: the argument, else ``MLFLOW_TRACKING_URI``."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    def excluded(self, key: str) -> bool:
        """Whether a param key is left out (it is, or is under, an ``exclude`` key)."""
        return any(key == k or key.startswith(k + ".") for k in self.exclude)


def _callback_nodes(config: DictConfig) -> list[DictConfig]:
    callbacks = OmegaConf.select(config, "hydra.callbacks", default=None) or {}
    return [
        node
        for node in callbacks.values()
        if OmegaConf.select(node, "_target_", default=None) == CALLBACK_TARGET
    ]


def settings_of(config: DictConfig) -> Settings | None:
    """The settings of the MLflow callback configured in ``config``, or None without one."""
    nodes = _callback_nodes(config)
    if not nodes:
        return None
    raw = OmegaConf.to_container(nodes[0], resolve=True)
    assert isinstance(raw, dict)
    return Settings.make({str(k): v for k, v in raw.items() if k != "_target_"})


def experiment_of(config: DictConfig) -> str:
    """The experiment a job logs to: the app's ``experiment_name`` key (the runner's app),
    else the callback's ``experiment_name``, else the app's job name."""
    name = OmegaConf.select(config, "experiment_name", default=None)
    if name is None:
        settings = settings_of(config) or Settings()
        name = settings.experiment_name or OmegaConf.select(config, "hydra.job.name", default=None)
    return str(name or "Default")
