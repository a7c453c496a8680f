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

from runner.tracking.redact import REDACTED, is_secret_key, redact_scalar

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
    reference, its literal default redacted); every leaf whose resolution reaches
    ``${oc.env:...}`` or a secret leaf, through any chain of interpolations (``a:
    ${oc.env:SECRET}``, ``b: ${a}``), keeps its reference rather than the value, so a config
    (a replayed one included) cannot copy the environment or a secret into a shared tracking
    store; other values have their text redacted (URL credentials, ``token=...``).

    Args:
        cfg: The config.
        skip: Root keys left out.
    """
    masked = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k not in skip])
    resolved = OmegaConf.to_container(masked, resolve=True)
    raw_tree = OmegaConf.to_container(masked, resolve=False)
    raw = dict(flatten(raw_tree))
    tainted = _tainted(raw_tree, raw, resolved)

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        secret = is_secret_key(path)
        if path not in raw:  # under a container reached through an interpolation
            if path in tainted:
                return _reference_of(path, raw)
            return redact_scalar(obj, secret=secret)
        ref = raw[path]
        if isinstance(ref, str) and "${" in ref and (secret or path in tainted):
            return redact_scalar(ref, secret=secret)
        return redact_scalar(obj, secret=secret)

    result = walk(resolved, "")
    assert isinstance(result, dict)
    return result


#: What the probe copy of a config resolves ``oc.env`` and every secret leaf to.
_PROBE = "RUNNER_PROBE_6f1c2a"
_PROBE_RESOLVER = "runner_tracking_probe"


def _tainted(raw_tree: Any, raw: dict[str, Any], resolved: Any) -> set[str]:
    """The resolved leaves whose value comes from ``oc.env`` or from a secret leaf.

    A copy of the config, with every ``oc.env`` call and every secret leaf replaced by a
    marker, is resolved: a leaf whose value holds the marker (or fails to resolve) got its
    value from one of them. Most configs hold neither and cost nothing here.
    """
    refs = [p for p, v in raw.items() if isinstance(v, str) and "${" in v]
    if not refs:
        return set()
    secrets = {p for p in raw if is_secret_key(p)}
    if not secrets and not any("oc.env" in raw[p] for p in refs):
        return set()
    if not OmegaConf.has_resolver(_PROBE_RESOLVER):
        OmegaConf.register_new_resolver(_PROBE_RESOLVER, lambda *_: _PROBE)

    def probe(obj: Any, path: str) -> Any:
        if isinstance(obj, dict):
            return {k: probe(v, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [probe(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if path in secrets:
            return _PROBE
        if isinstance(obj, str) and "oc.env" in obj:
            return obj.replace("oc.env:", f"{_PROBE_RESOLVER}:")
        return obj

    copy = OmegaConf.create(probe(raw_tree, ""))
    try:
        leaves = dict(flatten(OmegaConf.to_container(copy, resolve=True)))
    except Exception:
        # A resolver refused the marker: resolve leaf by leaf; a failing one is tainted.
        leaves = {}
        for path, _ in flatten(resolved):
            try:
                leaves[path] = OmegaConf.select(copy, path, throw_on_resolution_failure=True)
            except Exception:
                leaves[path] = _PROBE
    return {p for p, v in leaves.items() if isinstance(v, str) and _PROBE in v} - secrets


def _reference_of(path: str, raw: dict[str, Any]) -> Any:
    """The reference that yields ``path`` when an ancestor is an interpolation of a node
    (``b: ${db}`` -> ``b.password`` is ``${db.password}``), else :data:`REDACTED`."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        ref = raw.get(".".join(parts[:i]))
        if isinstance(ref, str) and _is_node_reference(ref):
            return "${" + ref.strip()[2:-1].strip() + "." + ".".join(parts[i:]) + "}"
        if ref is not None:
            break
    return REDACTED


def _is_node_reference(text: str) -> bool:
    t = text.strip()
    return t.startswith("${") and t.endswith("}") and all(c not in t[2:-1] for c in ":${}")


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
