"""Rebuild a logged job's config for Hydra, and vet the callables it names.

The logged ``.hydra/config.yaml`` is the job's composed config before resolution
(``${oc.env:...}`` references kept), but it has no defaults list, and Hydra fills
``hydra.runtime.choices`` (which become the ``model`` = ``xgb`` params) from the defaults
list only. So each group's node goes back into a one-option group of its own
(``model/xgb.yaml`` holding the logged ``model`` node), and a primary ``config.yaml`` lists
those options: composing it gives back the same config and the same choices. Today's
``conf/`` comes after it on the search path, for a group switched by a new override only
(``model=rf``).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_MODULE
from runner.errors import ConfigError, RunnerError

__all__ = [
    "ComposedJob",
    "UntrustedTargetError",
    "allowed_targets",
    "check_targets",
    "choices_from_params",
    "compose",
    "find_targets",
    "write_config_dir",
]

log = logging.getLogger(__name__)

#: Root keys of a logged job config that replay never takes from it: the hydra node and
#: the defaults list are rebuilt here (a crafted artifact could add callbacks through them).
_NOT_FROM_LOG = ("hydra", "defaults")
#: A config group or option name: dotted or slashed words, no `..` or absolute paths.
_NAME = re.compile(r"[A-Za-z0-9_\-]+(?:[./][A-Za-z0-9_\-]+)*")


class UntrustedTargetError(RunnerError):
    """A ``_target_`` of the replayed config is outside the allow-list."""


# -- the allow-list ---------------------------------------------------------------------------


def allowed_targets(extra: Iterable[str] = ()) -> list[str]:
    """The allow-listed ``_target_`` prefixes: ``runner/resources/replay.yaml`` plus ``extra``."""
    text = resources.files("runner.resources").joinpath("replay.yaml").read_text(encoding="utf-8")
    conf = OmegaConf.to_container(OmegaConf.create(text))
    listed = conf.get("allowed_targets") or [] if isinstance(conf, dict) else []
    return [str(p) for p in [*listed, *extra]]


def find_targets(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(config path, value)`` for every ``_target_`` key in a plain container."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield sub, value
            else:
                yield from find_targets(value, sub)
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from find_targets(value, f"{path}.{i}" if path else str(i))


def _under(name: str, prefixes: Sequence[str]) -> bool:
    # A prefix matches whole dotted parts: `sklearn.` allows sklearn.x, not sklearnx.
    for prefix in prefixes:
        base = prefix.rstrip(".")
        if name == base or name.startswith(base + "."):
            return True
    return False


def _defined_in(obj: Any) -> str | None:
    if isinstance(obj, ModuleType):
        return obj.__name__
    return getattr(obj, "__module__", None)


def check_targets(resolved: Mapping[str, Any], prefixes: Sequence[str], *, run_id: str) -> None:
    """Refuse a config whose ``_target_`` names anything outside ``prefixes``.

    A target passes when its dotted path is under a prefix *and* the object found there is
    defined under one too: ``runner.tracking.provenance.subprocess.run`` names an allowed
    module but reaches :func:`subprocess.run`. Only allowed paths are imported, so a refused
    target never runs import-time code.

    Raises:
        UntrustedTargetError: A target is outside the allow-list (the message names it).
        ConfigError: An allowed target can no longer be imported (the code moved).
    """
    from hydra._internal.utils import _locate

    hint = (
        "A config read from a tracking store can name any callable. If you trust the run's "
        "author, pass --trust, or allow the prefix with --allow-target PREFIX (or in "
        "allowed_targets of runner/resources/replay.yaml)."
    )
    allowed = ", ".join(prefixes) or "nothing"
    for where, target in find_targets(resolved):
        if not isinstance(target, str) or not _under(target, prefixes):
            raise UntrustedTargetError(
                f"refusing to replay run {run_id}: its config instantiates {target!r} (at "
                f"{where}), which is outside the replay allow-list ({allowed}). {hint}"
            )
        try:
            obj = _locate(target)
        except (ImportError, ValueError) as e:
            first = str(e).splitlines()[-1] if str(e) else type(e).__name__
            raise ConfigError(
                f"the config of run {run_id} no longer composes: {where} = {target!r} cannot "
                f"be imported ({first}). The code it names was moved or removed since the run; "
                "check out the run's commit (its runner.git.commit tag) and replay from there, "
                f"or point it elsewhere with an override ({where}=...)."
            ) from None
        home = _defined_in(obj)
        if home is None or not _under(home, prefixes):
            raise UntrustedTargetError(
                f"refusing to replay run {run_id}: its config instantiates {target!r} (at "
                f"{where}), which is {home or 'an object of unknown origin'}'s "
                f"{getattr(obj, '__qualname__', type(obj).__name__)}, outside the replay "
                f"allow-list ({allowed}). {hint}"
            )


# -- rebuilding the config --------------------------------------------------------------------


def choices_from_params(params: Mapping[str, str]) -> dict[str, str]:
    """Group choices recovered from a run's params when ``hydra.yaml`` was not logged.

    A config node is either a leaf or a mapping, so a param that is a leaf *and* has
    children (``model`` beside ``model.max_depth``) can only be a group choice.
    """
    keys = set(params)
    return {
        k: v for k, v in params.items() if "." not in k and any(p.startswith(k + ".") for p in keys)
    }


def _package(key: str) -> str:
    group, _, package = key.partition("@")
    return package or group.replace("/", ".")


def _pop(tree: dict[str, Any], dotted: str) -> Any:
    *parents, last = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    if isinstance(node, dict) and isinstance(node.get(last), dict):
        return node.pop(last)
    return None


def _runner_hydra_node() -> dict[str, Any]:
    # Today's hydra settings (callbacks, output dirs): the code path of `python -m runner`.
    text = resources.files("runner.conf").joinpath("config.yaml").read_text(encoding="utf-8")
    node = OmegaConf.to_container(OmegaConf.create(text), resolve=False).get("hydra")  # type: ignore[union-attr]
    return copy.deepcopy(node) if isinstance(node, dict) else {}


def write_config_dir(
    dest: Path,
    job: Mapping[str, Any],
    choices: Mapping[str, str],
    *,
    callbacks: Mapping[str, Any],
) -> list[str]:
    """Write the logged job config as a Hydra config dir (``dest/config.yaml`` + groups).

    Args:
        dest: An empty directory.
        job: The logged ``.hydra/config.yaml`` (unresolved).
        choices: The job's group choices (``hydra/*`` ones are left out).
        callbacks: Hydra callbacks added to today's (``name -> node``).

    Returns:
        The root keys dropped from the logged config (``hydra``, ``defaults``).
    """
    tree = copy.deepcopy(dict(job))
    dropped = [k for k in _NOT_FROM_LOG if k in tree]
    for key in dropped:
        del tree[key]
    groups = {
        k: str(v)
        for k, v in choices.items()
        if v is not None and k != "hydra" and not k.startswith("hydra/")
    }
    # Deepest packages first, so `model/optim` is taken out of `model` before `model` goes.
    nodes: dict[str, Any] = {}
    for key in sorted(groups, key=lambda k: -_package(k).count(".")):
        nodes[key] = _pop(tree, _package(key))
    defaults: list[Any] = []
    for key, option in groups.items():
        group = key.partition("@")[0]
        if not all(_NAME.fullmatch(n) for n in (group, _package(key), option)):
            # Both become file paths here: a crafted hydra.yaml must not write outside dest.
            raise ConfigError(
                f"the logged group choice {key}={option!r} is not a valid config name; the "
                "run's .hydra/hydra.yaml was altered, so it cannot be replayed."
            )
        node = nodes[key]
        # A group whose content went to another package (`_global_` presets) leaves only
        # its choice: its values are already in the root config.
        header = f"# @package {_package(key)}" if node is not None else "# @package _global_"
        path = dest / group / f"{option}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{header}\n{OmegaConf.to_yaml(OmegaConf.create(node or {}))}")
        defaults.append({key: option})
    hydra = _runner_hydra_node()
    hydra["searchpath"] = [CONFIG_MODULE]
    hydra.setdefault("callbacks", {}).update(copy.deepcopy(dict(callbacks)))
    primary = {"defaults": [*defaults, "_self_"], **tree, "hydra": hydra}
    (dest / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(primary)))
    return dropped


@dataclass
class ComposedJob:
    """A job config composed from a rebuilt config dir."""

    config: DictConfig
    resolved: dict[str, Any]
    choices: dict[str, str]


def compose(config_dir: Path, overrides: Sequence[str], *, run_id: str) -> ComposedJob:
    """Compose ``config_dir`` with ``overrides`` and resolve the job part.

    Raises:
        ConfigError: The config no longer composes or resolves (the message says why).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    previous = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(
            config_dir=str(config_dir), job_name="runner", version_base="1.3"
        ):
            cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            job = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
            resolved = OmegaConf.to_container(job, resolve=True)
            choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    except (HydraException, OmegaConfBaseException) as e:
        if isinstance(e, RunnerError):
            raise
        raise ConfigError(
            f"the config of run {run_id} no longer composes: {_one_line(e)}. Fix or drop the "
            "offending override; if the logged config needs code that changed since (a "
            "resolver, a config group), check out the run's commit (its runner.git.commit "
            "tag) and replay from there."
        ) from None
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = previous  # set above only to resolve ${hydra:...}
    return ComposedJob(config=cfg, resolved=resolved, choices=choices)  # type: ignore[arg-type]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({' '.join(str(cause).split())})"
    return text or type(e).__name__
