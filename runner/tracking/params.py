"""Turn a resolved config into MLflow params: dotted keys, one stringification rule.

The rule (documented in the README): every leaf of the config becomes one param whose key is
its dotted path (list items as ``key.0``, ``key.1``); the value is Python's ``str()`` of the
leaf (``None``, ``True``, ``0.1``, ``[64, 64]`` never appears because lists are expanded;
empty lists and dicts are ``[]`` and ``{}``). Keys longer than MLflow's 250 characters are
cut and suffixed with a short hash; values longer than 6000 characters are cut and end in
``...``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.tracking.redact import REDACTED, is_secret_key, redact_text

__all__ = [
    "MAX_KEY",
    "MAX_VALUE",
    "NOT_PARAMS",
    "config_params",
    "flatten",
    "public_config",
    "stringify",
]

MAX_KEY = 250
MAX_VALUE = 6000
#: Root nodes that describe where or how runs go, not the experiment: never params.
NOT_PARAMS = frozenset({"hydra", "backend"})


def stringify(value: Any) -> str:
    """The one stringification rule for param values (see the module docstring)."""
    text = str(value)
    if len(text) > MAX_VALUE:
        text = text[: MAX_VALUE - 3] + "..."
    return text


def _key(path: str) -> str:
    if len(path) <= MAX_KEY:
        return path
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    return f"{path[: MAX_KEY - 9]}~{digest}"


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, leaf)`` for every leaf of a plain container."""
    if isinstance(obj, Mapping):
        if not obj and prefix:
            yield prefix, {}
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        if not obj and prefix:
            yield prefix, []
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, obj


def public_config(cfg: DictConfig, *, skip: frozenset[str] = NOT_PARAMS) -> dict[str, Any]:
    """The resolved config as it may be logged: no secret and no environment value in it.

    Leaves under secret-looking keys become :data:`REDACTED` (or keep their ``${...}``
    reference); leaves written as ``${oc.env:NAME}`` anywhere keep the reference rather than
    the value, so a config (a replayed one included) cannot copy the environment into a
    shared tracking store; URL credentials are masked.

    Args:
        cfg: The config.
        skip: Root keys left out.
    """
    masked = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k not in skip])
    resolved = OmegaConf.to_container(masked, resolve=True)
    raw = dict(flatten(OmegaConf.to_container(masked, resolve=False)))

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        ref = raw.get(path)
        is_ref = isinstance(ref, str) and ref.startswith("${")
        if is_ref and "oc.env:" in str(ref):
            return ref
        if is_secret_key(path) and obj is not None:
            return ref if is_ref else REDACTED
        return redact_text(obj) if isinstance(obj, str) else obj

    result = walk(resolved, "")
    assert isinstance(result, dict)
    return result


def config_params(
    cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The params of a job: every leaf of :func:`public_config`, plus the group choices.

    Args:
        cfg: The job's config (with or without the ``hydra`` node; it is skipped), or its
            :func:`public_config` already made (resolving and redacting is most of the cost).
        choices: Hydra's ``runtime.choices``; each non-Hydra group except ``backend``
            becomes a param named after the group (``model`` = ``xgb``).
    """
    public = public_config(cfg) if isinstance(cfg, DictConfig) else cfg
    params = {
        _key(path): stringify(value)
        for path, value in flatten({k: v for k, v in public.items() if k not in NOT_PARAMS})
    }
    for group, option in (choices or {}).items():
        if group.startswith("hydra/") or group == "hydra" or group.split("/")[0] in NOT_PARAMS:
            continue
        if option is not None:
            params[_key(group)] = stringify(option)
    return params
