"""Keep secrets out of MLflow and off the disk.

A value is secret when any key on its config path looks like a secret (password, token, ...).
Secret values are replaced by :data:`REDACTED`, except ``${...}`` interpolations such as
``${oc.env:DB_PASSWORD}``: those are references, not secrets, and keeping them is what lets a
replay resolve the secret from the replaying user's environment. Credentials inside URLs
(``scheme://user:password@host``) are masked wherever they appear.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = [
    "REDACTED",
    "is_secret_key",
    "redact_file",
    "redact_override",
    "redact_text",
    "redact_tree",
]

REDACTED = "***"

_SECRET_WORDS = (
    r"passw(?:or)?d|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|credentials?|auth|session[_-]?key|signature"
)
_SECRET_KEY = re.compile(rf"(?:^|[._\-/])(?:{_SECRET_WORDS})(?:$|[._\-/])|{_SECRET_WORDS}", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")
# `key=value` pairs inside override strings and Hydra's override_dirname ("a=1,db.password=x").
_OVERRIDE_PAIR = re.compile(
    rf"(?P<key>[+~]*[\w.\-/@]*(?:{_SECRET_WORDS})[\w.\-/@]*)=(?P<value>'[^']*'|\"[^\"]*\"|[^,\s]*)",
    re.I,
)


def is_secret_key(key: str) -> bool:
    """Whether a config key (or any part of a dotted path) names a secret."""
    return bool(_SECRET_KEY.search(str(key)))


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("${") and value.strip().endswith("}")


def redact_text(text: str) -> str:
    """Mask URL credentials and ``secret_key=value`` pairs in free text."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)

    def _pair(m: re.Match[str]) -> str:
        if _is_interpolation(m["value"]):
            return m.group(0)
        return f"{m['key']}={REDACTED}"

    return _OVERRIDE_PAIR.sub(_pair, text)


def redact_override(override: str) -> str:
    """Redact one command-line override (``db.password=hunter2`` -> ``db.password=***``)."""
    key, sep, value = override.partition("=")
    if sep and is_secret_key(key) and not _is_interpolation(value):
        return f"{key}={REDACTED}"
    return redact_text(override)


def redact_tree(obj: Any, *, secret: bool = False) -> Any:
    """Return a copy of a plain container (dicts, lists, scalars) with secrets redacted."""
    if isinstance(obj, dict):
        return {k: redact_tree(v, secret=secret or is_secret_key(str(k))) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v, secret=secret) for v in obj]
    if secret and obj is not None and not _is_interpolation(obj):
        return REDACTED
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def _redact_overrides_in(obj: Any) -> Any:
    # Hydra keeps raw override strings in lists (overrides.yaml, hydra.overrides.task).
    if isinstance(obj, dict):
        return {k: _redact_overrides_in(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_override(v) if isinstance(v, str) else _redact_overrides_in(v) for v in obj]
    return obj


def redact_file(path: Path) -> bool:
    """Redact a YAML file that Hydra wrote (config, hydra, overrides, multirun) in place.

    Returns:
        Whether the file changed.
    """
    import yaml

    if not path.is_file():
        return False
    original = path.read_text(encoding="utf-8")
    # Parsing Hydra's YAML costs ~20 ms a file and runs for every job of a sweep: skip the
    # files in which nothing could be a secret.
    if not (_SECRET_KEY.search(original) or _URL_CREDENTIALS.search(original)):
        return False
    data = yaml.safe_load(original)
    cleaned = redact_tree(_redact_overrides_in(data))
    if cleaned == data:
        return False
    path.write_text(
        yaml.safe_dump(cleaned, sort_keys=False, default_flow_style=False, allow_unicode=True),
        encoding="utf-8",
    )
    return True
