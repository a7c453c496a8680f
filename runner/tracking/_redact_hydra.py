"""Redaction of Hydra's own things: overrides (Hydra's grammar), ``override_dirname``, and
the YAML files Hydra writes (``.hydra/*.yaml``, ``multirun.yaml``).

:mod:`runner.tracking.redact` is the public surface.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.tracking._redact_core import (
    REDACTED,
    is_reference,
    is_secret_key,
    might_hold_secret,
    redact_scalar,
    redact_text,
    redact_tree,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "redact_dirname",
    "redact_file",
    "redact_job_dirname",
    "redact_override",
    "redact_yaml_text",
]


# -- overrides -----------------------------------------------------------------------------
@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _redact_element(value: Any, *, secret: bool, path: str) -> Any:
    """A parsed override element (Hydra's types, quotes kept) with secrets redacted."""
    from hydra.core.override_parser.types import QuotedString

    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = f"{path}.{getattr(k, 'text', k)}"
            out[k] = _redact_element(v, secret=secret or is_secret_key(sub), path=sub)
        return out
    if isinstance(value, list):
        return [_redact_element(v, secret=secret, path=f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, QuotedString):
        new = redact_scalar(value.text, secret=secret)
        return value if new == value.text else QuotedString(text=new, quote=value.quote)
    return redact_scalar(value, secret=secret)


def redact_override(override: str) -> str:
    """One command-line override with its secrets redacted, in Hydra's override grammar.

    ``db.password=hunter2`` -> ``db.password=***``; ``+db={user: u, password: p}`` ->
    ``+db={user:u,password:***}``; a grid ``db.password=s1,s2`` -> ``db.password=***``;
    ``db.password=${oc.env:PW}`` is kept. An override Hydra cannot parse is redacted as text.
    """
    if not might_hold_secret(override):
        return override
    try:
        parsed = _parser().parse_override(override)
    except Exception:  # not an override after all: redact its shapes
        key, sep, value = override.partition("=")
        if sep and is_secret_key(key):
            return f"{key}={redact_scalar(value, secret=True)}"
        return redact_text(override)
    from hydra.core.override_parser.types import ChoiceSweep

    if parsed.value_type is None:  # ~key: a deletion holds no value
        return override
    key = parsed.get_key_element()
    secret = is_secret_key(parsed.key_or_group)
    value = parsed._value
    if isinstance(value, ChoiceSweep):
        if secret:
            return f"{key}={REDACTED}"
        items = [_redact_element(v, secret=False, path=parsed.key_or_group) for v in value.list]
        if items == value.list:
            return override
        text = ",".join(_element_text(v) for v in items)
        return f"{key}={text if value.simple_form else f'choice({text})'}"
    if parsed.is_sweep_override():  # range / interval / glob: numbers or group names
        return f"{key}={REDACTED}" if secret else override
    new = _redact_element(value, secret=secret, path=parsed.key_or_group)
    if new == value:
        return override
    return f"{key}={_element_text(new)}"


_BARE = re.compile(r"[\w\-+./*@?|%]*")


def _element_text(value: Any) -> str:
    """Hydra's ``Override._get_value_element_as_str``, but a string that is not a bare word
    is quoted rather than backslash-escaped (``'https://u:***@h'``, a reference as it is)."""
    from hydra.core.override_parser.types import Override, Quote, QuotedString

    if isinstance(value, list):
        return "[" + ",".join(_element_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{_element_text(k)}:{_element_text(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, str) and not (_BARE.fullmatch(value) or is_reference(value)):
        return QuotedString(text=value, quote=Quote.single).with_quotes()
    if isinstance(value, str):
        return value
    return str(Override._get_value_element_as_str(value))


def _override_key(line: str) -> str:
    try:
        return str(_parser().parse_override(line).key_or_group)
    except Exception:
        return line.partition("=")[0].lstrip("+~")


def _reaches_secret(text: str, raw: Mapping[str, Any] | None, seen: frozenset[str]) -> bool:
    """Whether an interpolation in ``text`` reads the environment or a secret leaf (``raw``:
    the config's unresolved leaves by dotted path, to follow ``${a}`` to ``a``)."""
    if "oc.env" in text:
        return True
    if raw is None:
        return False
    for ref in re.findall(r"\$\{\s*([\w.\-]+)\s*\}", text):
        if ref in seen:
            continue
        if is_secret_key(ref):
            return True
        under = {k: v for k, v in raw.items() if k == ref or k.startswith(f"{ref}.")}
        if any(is_secret_key(k) for k in under) or any(
            isinstance(v, str) and "${" in v and _reaches_secret(v, raw, seen | {ref})
            for v in under.values()
        ):
            return True
    return False


@functools.cache
def _salt() -> bytes:
    import os

    return os.urandom(16)


def _digest(text: str) -> str:
    """A short digest of ``text`` under a key that never leaves this process: it tells two
    secrets apart without being a way to guess either."""
    import hmac

    return hmac.new(_salt(), text.encode(), "blake2s").hexdigest()[:8]


def redact_dirname(
    task_overrides: Sequence[str],
    *,
    kv_sep: str = "=",
    item_sep: str = ",",
    exclude_keys: Iterable[str] = (),
    raw: Mapping[str, Any] | None = None,
) -> str:
    """``hydra.job.override_dirname`` as Hydra computes it, from redacted overrides.

    The same as Hydra's ``get_overrides_dirname`` when no override holds a secret; a
    redacted override ends in ``#`` and a digest keyed for this process, so that the jobs of
    a grid over a secret (``db.password=s1,s2``) do not share a folder. An
    override whose interpolation reads the environment or a secret (``+x=${oc.env:VAR}``,
    ``+y=${db.password}``) is redacted too: the dirname is resolved where it is used
    (``hydra.run.dir``), which would put the value into a folder name (and an escaped
    ``${`` in a folder name breaks Hydra's own interpolations of the output dir).

    Args:
        task_overrides: ``hydra.overrides.task``, unresolved.
        kv_sep: Hydra's ``hydra.job.config.override_dirname.kv_sep``.
        item_sep: ... ``item_sep``.
        exclude_keys: ... ``exclude_keys``.
        raw: The config's unresolved leaves by dotted path, to follow ``${a}`` to ``a``.
    """
    exclude = set(exclude_keys)
    lines = []
    for line in task_overrides:
        if _override_key(line) in exclude:
            continue
        redacted = redact_override(line)
        if "${" in redacted and _reaches_secret(redacted, raw, frozenset()):
            redacted = f"{redacted.partition('=')[0]}={REDACTED}"
        if redacted != line:
            # Jobs of a grid over a secret (db.password=s1,s2) keep apart in their folders.
            redacted = f"{redacted}#{_digest(line)}"
        lines.append(redacted)
    return re.sub("[=]", kv_sep, item_sep.join(sorted(lines)))


def redact_job_dirname(config: DictConfig) -> bool:
    """Rewrite ``hydra.job.override_dirname`` of ``config`` with its secrets redacted.

    Call it before the job's output directory is made: ``hydra.run.dir=outputs/${hydra.job.
    override_dirname}`` (a common idiom) would otherwise put a secret into a folder name.

    Returns:
        Whether it changed.
    """
    from omegaconf import OmegaConf, open_dict, read_write

    job = OmegaConf.select(config, "hydra.job", default=None)
    task = OmegaConf.select(config, "hydra.overrides.task", default=None)
    if job is None or task is None:
        return False
    lines = [str(o) for o in OmegaConf.to_container(task, resolve=False)]  # type: ignore[union-attr]
    if all(redact_override(o) == o and "${" not in o for o in lines):
        return False  # the common case, at no cost
    raw = dict(_flatten(OmegaConf.to_container(config, resolve=False)))
    conf = raw.get
    dirname = redact_dirname(
        lines,
        kv_sep=str(conf("hydra.job.config.override_dirname.kv_sep", "=")),
        item_sep=str(conf("hydra.job.config.override_dirname.item_sep", ",")),
        exclude_keys=[
            str(v)
            for k, v in raw.items()
            if k.startswith("hydra.job.config.override_dirname.exclude_keys.")
        ],
        raw=raw,
    )
    if raw.get("hydra.job.override_dirname") == dirname:
        return False
    with read_write(job), open_dict(job):
        job.override_dirname = dirname
    return True


def _flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, obj


# -- Hydra's files -------------------------------------------------------------------------
def _redact_hydra_node(node: dict[str, Any]) -> dict[str, Any]:
    """The ``hydra`` node of hydra.yaml / multirun.yaml: overrides parsed, the dirname
    recomputed from them, the rest by key."""
    node = dict(node)
    overrides = node.get("overrides")
    raw_task: list[str] = []
    if isinstance(overrides, dict):
        overrides = dict(overrides)
        for name, lines in overrides.items():
            if isinstance(lines, list):
                if name == "task":
                    raw_task = [str(x) for x in lines]
                overrides[name] = [redact_override(x) if isinstance(x, str) else x for x in lines]
        node["overrides"] = overrides
    job = node.get("job")
    if isinstance(job, dict) and isinstance(job.get("override_dirname"), str):
        seps = _seps((job.get("config") or {}).get("override_dirname") or {})
        dirname = job["override_dirname"]
        redacted = redact_dirname(raw_task, **seps)
        # Recomputed from the recorded overrides when it was made from them (a grid value
        # `s1,s2` cannot be told from two overrides once joined); else by shape.
        known = dirname in (redacted, _plain_dirname(raw_task, **seps))
        node["job"] = {**job, "override_dirname": redacted if known else redact_text(dirname)}
    sweeper = node.get("sweeper")
    if isinstance(sweeper, dict) and isinstance(sweeper.get("params"), dict):
        params = {}
        for k, v in sweeper["params"].items():
            if isinstance(v, str):
                _, _, v = redact_override(f"{k}={v}").partition("=")
            params[k] = v
        node["sweeper"] = {**sweeper, "params": params}
    return dict(redact_tree(node, path="hydra"))


def _seps(conf: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kv_sep": str(conf.get("kv_sep", "=")),
        "item_sep": str(conf.get("item_sep", ",")),
        "exclude_keys": list(conf.get("exclude_keys") or []),
    }


def _plain_dirname(
    task: Sequence[str], *, kv_sep: str, item_sep: str, exclude_keys: Iterable[str]
) -> str:
    """Hydra's own ``get_overrides_dirname``, on override strings."""
    exclude = set(exclude_keys)
    lines = sorted(line for line in task if _override_key(line) not in exclude)
    return re.sub("[=]", kv_sep, item_sep.join(lines))


def _redact_doc(data: Any) -> Any:
    if isinstance(data, list):  # overrides.yaml
        return [redact_override(x) if isinstance(x, str) else redact_tree(x) for x in data]
    if isinstance(data, dict) and isinstance(data.get("hydra"), dict):
        return {
            k: _redact_hydra_node(v) if k == "hydra" else redact_tree(v, path=str(k))
            for k, v in data.items()
        }
    return redact_tree(data)


def redact_yaml_text(text: str) -> str:
    """A YAML document (a config, or one of Hydra's files) with its secrets redacted.

    Parsing costs ~20 ms a file and runs for every job of a sweep: a document in which
    nothing could be a secret is returned as it is, unparsed.
    """
    if not might_hold_secret(text):
        return text
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return redact_text(text)
    cleaned = _redact_doc(data)
    if cleaned == data:
        return text
    return yaml.safe_dump(cleaned, sort_keys=False, default_flow_style=False, allow_unicode=True)


def redact_file(path: Path) -> bool:
    """Redact a YAML file that Hydra wrote (config, hydra, overrides, multirun) in place.

    Returns:
        Whether the file changed.
    """
    if not path.is_file():
        return False
    original = path.read_text(encoding="utf-8")
    cleaned = redact_yaml_text(original)
    if cleaned == original:
        return False
    tmp = path.with_name(f".{path.name}.redacting")
    tmp.write_text(cleaned, encoding="utf-8")
    tmp.replace(path)
    return True
