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

import contextlib
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
    "AllowList",
    "ComposedJob",
    "UntrustedTargetError",
    "allow_list",
    "check_targets",
    "choices_from_params",
    "compose",
    "find_targets",
    "frozen",
    "hydra_set",
    "job_groups",
    "owned_groups",
    "write_config_dir",
]

log = logging.getLogger(__name__)

#: Root keys a logged job config never has (Hydra saves the job's part only, composed):
#: replay refuses a config with either (a crafted artifact could add callbacks through them).
_NOT_FROM_LOG = ("hydra", "defaults")
#: A config group or option name: dotted or slashed words, no `..` or absolute paths.
_NAME = re.compile(r"[A-Za-z0-9_\-]+(?:[./][A-Za-z0-9_\-]+)*")


class UntrustedTargetError(RunnerError):
    """A ``_target_`` of the replayed config is outside the allow-list."""


# -- the allow-list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowList:
    """What a replayed config may instantiate (``runner/resources/replay.yaml``).

    Attributes:
        estimators: Packages whose *estimator classes* (subclasses of scikit-learn's
            ``BaseEstimator``, defined in the package) may be instantiated anywhere.
        datasets: The dataset loaders, by exact name: the only targets of ``dataset``.
        code: Packages whose every callable may be instantiated anywhere: your own code
            (``models.``), and what ``--allow-target PREFIX`` adds.
    """

    estimators: tuple[str, ...]
    datasets: tuple[str, ...]
    code: tuple[str, ...]

    def describe(self) -> str:
        """One line naming what is allowed, for error messages."""
        parts = [
            f"estimator classes of {', '.join(self.estimators)}" if self.estimators else "",
            f"the loaders {', '.join(self.datasets)}" if self.datasets else "",
            f"anything defined under {', '.join(self.code)}" if self.code else "",
        ]
        return "; ".join(p for p in parts if p) or "nothing"


def allow_list(extra: Iterable[str] = ()) -> AllowList:
    """The replay allow-list of ``runner/resources/replay.yaml``, plus ``extra`` packages.

    Args:
        extra: ``--allow-target`` prefixes: every callable defined under them is allowed.

    Raises:
        ConfigError: The file is not the expected mapping of lists.
    """
    text = resources.files("runner.resources").joinpath("replay.yaml").read_text(encoding="utf-8")
    conf = OmegaConf.to_container(OmegaConf.create(text))
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("estimators", "datasets", "code"):
        value = conf.get(key) if isinstance(conf, dict) else None
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"runner/resources/replay.yaml: {key} is {value!r}; it must be a list of "
                "dotted names (e.g. [sklearn.])."
            )
        lists[key] = tuple(value)
    return AllowList(
        estimators=lists["estimators"],
        datasets=lists["datasets"],
        code=(*lists["code"], *(str(p) for p in extra)),
    )


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


def _describe(obj: Any) -> str:
    home = _defined_in(obj) or "an object of unknown origin"
    kind = "class" if isinstance(obj, type) else type(obj).__name__
    return f"{home}'s {getattr(obj, '__qualname__', '')} ({kind})"


def _is_estimator_class(obj: Any) -> bool:
    from sklearn.base import BaseEstimator

    return isinstance(obj, type) and issubclass(obj, BaseEstimator)


def _locate(target: str, where: str, run_id: str) -> Any:
    from hydra._internal.utils import _locate as hydra_locate

    try:
        return hydra_locate(target)
    except (ImportError, ValueError) as e:
        first = str(e).splitlines()[-1] if str(e) else type(e).__name__
        raise ConfigError(
            f"the config of run {run_id} no longer composes: {where} = {target!r} cannot "
            f"be imported ({first}). The code it names was moved or removed since the run; "
            "check out the run's commit (its runner.git.commit tag) and replay from there, "
            f"or point it elsewhere with an override ({where}=...)."
        ) from None


def _refusal(run_id: str, where: str, target: Any, why: str, allow: AllowList) -> str:
    return (
        f"refusing to replay run {run_id}: its config instantiates {target!r} (at {where}), "
        f"{why}. A config read from a tracking store can name any callable, so replay "
        f"instantiates only {allow.describe()}. If you trust the run's author, pass --trust, "
        "or allow a package of yours with --allow-target PREFIX (or in "
        "runner/resources/replay.yaml)."
    )


def check_targets(resolved: Mapping[str, Any], allow: AllowList, *, run_id: str) -> None:
    """Refuse a config whose ``_target_`` values name anything ``allow`` does not.

    Checked on the object found, not only its name: ``dataset._target_`` must be one of the
    loaders; any other target an estimator class (a subclass of scikit-learn's
    ``BaseEstimator`` defined in an ``estimators`` package), or anything defined under a
    ``code`` package. ``runner.tracking.provenance.subprocess.run`` names a runner module but
    is :func:`subprocess.run`; ``sklearn.utils._testing.assert_run_python_script_without_output``
    is a scikit-learn function, not an estimator: both are refused. Only names under an
    allowed package are imported, so a refused target never runs import-time code.

    Raises:
        UntrustedTargetError: A target is not allowed (the message names it and its path).
        ConfigError: An allowed target can no longer be imported (the code moved).
    """
    for where, target in find_targets(resolved):
        if not isinstance(target, str):
            raise UntrustedTargetError(
                _refusal(run_id, where, target, "which is not a dotted name", allow)
            )
        if _under(target, allow.code):
            obj = _locate(target, where, run_id)
            home = _defined_in(obj)
            if home is None or not _under(home, allow.code):
                what = f"{home or 'an object of unknown origin'}'s " + str(
                    getattr(obj, "__qualname__", type(obj).__name__)
                )
                raise UntrustedTargetError(
                    _refusal(run_id, where, target, f"which is {what}", allow)
                )
            continue
        if where == "dataset._target_":
            if target not in allow.datasets:
                raise UntrustedTargetError(
                    _refusal(run_id, where, target, "which is not a dataset loader", allow)
                )
            obj = _locate(target, where, run_id)
            found = f"{_defined_in(obj)}.{getattr(obj, '__qualname__', '')}"
            if found != target:
                raise UntrustedTargetError(
                    _refusal(run_id, where, target, f"which is {found}", allow)
                )
            continue
        if not _under(target, allow.estimators):
            raise UntrustedTargetError(
                _refusal(run_id, where, target, "which is outside the allow-list", allow)
            )
        obj = _locate(target, where, run_id)
        home = _defined_in(obj) or ""
        if not _is_estimator_class(obj) or not _under(home, allow.estimators):
            why = f"which is {_describe(obj)}, not an estimator class"
            raise UntrustedTargetError(_refusal(run_id, where, target, why, allow))


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


def owned_groups() -> frozenset[str]:
    """The config groups of the runner's own ``conf/`` (``model``, ``dataset``, ...)."""
    root = resources.files("runner.conf")
    return frozenset(
        p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")
    )


def _refuse_config(run_id: str, what: str) -> ConfigError:
    return ConfigError(
        f"refusing to replay run {run_id}: its logged config {what}. A job's logged config "
        "never holds one (Hydra's own settings come from today's conf/, never from a store), "
        "so the run's .hydra artifacts were altered; replay a run whose artifacts you trust."
    )


def job_groups(
    job: Mapping[str, Any], choices: Mapping[str, str], *, run_id: str
) -> dict[str, str]:
    """The group choices a replay rebuilds, after refusing any that could steer Hydra.

    Nothing from a store may decide Hydra's own config: a root ``hydra`` or ``defaults``
    node, a choice with a package (``x@_global_`` would place a node, ``hydra`` included, at
    the root), a choice for a group the runner does not own, or a group node with a
    ``defaults`` list of its own (Hydra would compose what it names).

    Args:
        job: The logged ``.hydra/config.yaml``.
        choices: The logged ``hydra.runtime.choices`` (``hydra/*`` ones are ignored: today's
            ``conf/`` sets Hydra's groups).
        run_id: For the messages.

    Returns:
        ``group -> option`` of the job's own groups.

    Raises:
        ConfigError: Naming the key that was refused.
    """
    for key in _NOT_FROM_LOG:
        if key in job:
            raise _refuse_config(run_id, f"has a root `{key}` node")
    owned = owned_groups()
    groups: dict[str, str] = {}
    for key, option in choices.items():
        if option is None or key == "hydra" or key.startswith("hydra/"):
            continue
        if "@" in key:
            raise _refuse_config(run_id, f"chooses {key}={option!r}, a group with a package")
        group = key.split("/")[0]
        if group not in owned:
            raise _refuse_config(
                run_id,
                f"chooses {key}={option!r}, a group the runner does not own (it owns "
                f"{', '.join(sorted(owned))})",
            )
        if not all(_NAME.fullmatch(n) for n in (key, str(option))):
            # Both become file paths here: a crafted hydra.yaml must not write outside dest.
            raise ConfigError(
                f"the logged group choice {key}={option!r} is not a valid config name; the "
                "run's .hydra/hydra.yaml was altered, so it cannot be replayed."
            )
        node = _get(job, _package(key))
        if isinstance(node, dict) and "defaults" in node:
            raise _refuse_config(run_id, f"has a `defaults` list in its `{_package(key)}` node")
        groups[key] = str(option)
    return groups


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def write_config_dir(
    dest: Path, job: Mapping[str, Any], choices: Mapping[str, str], *, run_id: str
) -> None:
    """Write the logged job config as a Hydra config dir (``dest/config.yaml`` + groups).

    Args:
        dest: An empty directory.
        job: The logged ``.hydra/config.yaml`` (unresolved).
        choices: The job's group choices (``hydra/*`` ones are left out).
        run_id: For the messages.

    Raises:
        ConfigError: The config holds what replay never takes from a store
            (:func:`job_groups`).
    """
    groups = job_groups(job, choices, run_id=run_id)
    tree = copy.deepcopy(dict(job))
    # Deepest packages first, so `model/optim` is taken out of `model` before `model` goes.
    nodes: dict[str, Any] = {}
    for key in sorted(groups, key=lambda k: -_package(k).count(".")):
        nodes[key] = _pop(tree, _package(key))
    defaults: list[Any] = []
    for key, option in groups.items():
        node = nodes[key]
        # A group whose content went to another package (`_global_` presets) leaves only
        # its choice: its values are already in the root config.
        header = f"# @package {_package(key)}" if node is not None else "# @package _global_"
        path = dest / key / f"{option}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{header}\n{OmegaConf.to_yaml(OmegaConf.create(node or {}))}")
        defaults.append({key: option})
    hydra = _runner_hydra_node()
    hydra["searchpath"] = [CONFIG_MODULE]
    primary = {"defaults": [*defaults, "_self_"], **tree, "hydra": hydra}
    (dest / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(primary)))


@dataclass
class ComposedJob:
    """A job config composed from a rebuilt config dir, resolved once.

    Attributes:
        config: The composed config, ``hydra`` node included, interpolations kept: what
            Hydra's job steps and the MLflow callback see (the logged params keep their
            ``${oc.env:...}`` references).
        resolved: The job part, resolved once: what replay checks and prints.
        task: ``resolved`` as the config the task runs (:func:`frozen`): no interpolation
            is resolved again, so the job instantiates exactly what was checked.
        choices: The group choices.
        env_values: What the resolution read from the environment (``oc.env``), the
            tracking URI aside: replay masks these in every write.
    """

    config: DictConfig
    resolved: dict[str, Any]
    task: DictConfig
    choices: dict[str, str]
    env_values: set[str]


#: Environment variables replay itself sets for the config (the backend's URI).
_OWN_ENV = frozenset({"MLFLOW_TRACKING_URI"})


@contextlib.contextmanager
def _recording_env(read: set[str]) -> Iterator[None]:
    """``oc.env`` records each value it returns into ``read`` while the block runs."""
    from omegaconf.resolvers import oc

    def env(key: str, *default: Any) -> Any:
        value = oc.env(key, *default)
        if isinstance(value, str) and key not in _OWN_ENV:
            read.add(value)
        return value

    OmegaConf.register_new_resolver("oc.env", env, replace=True)
    try:
        yield
    finally:
        OmegaConf.register_new_resolver("oc.env", oc.env, replace=True)


_INTERPOLATION = re.compile(r"(\\*)\$\{")


def _literal(value: Any) -> Any:
    if isinstance(value, str):
        # OmegaConf reads `\${` as a literal `${`, and `\\` before it as one backslash.
        return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


def frozen(resolved: Mapping[str, Any]) -> DictConfig:
    r"""A config holding exactly ``resolved``, with nothing left to resolve.

    A resolved string that looks like an interpolation (``"${oc.env:X}"``, from an escaped
    ``\${...}`` in the logged config) is kept a literal string: resolving the result gives
    back ``resolved``, every time.
    """
    cfg = OmegaConf.create(_literal(dict(resolved)))
    OmegaConf.set_struct(cfg, True)
    return cfg


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
            env_values: set[str] = set()
            with _recording_env(env_values):
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
    assert isinstance(resolved, dict)
    return ComposedJob(
        config=cfg,
        resolved=resolved,  # type: ignore[arg-type]
        task=frozen(resolved),  # type: ignore[arg-type]
        choices=choices,  # type: ignore[arg-type]
        env_values=env_values,
    )


@contextlib.contextmanager
def hydra_set(config: DictConfig) -> Iterator[None]:
    """``HydraConfig`` set to ``config`` (for ``${hydra:...}``), and resolution errors as
    :class:`ConfigError`: the logged config is read again for its params.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import OmegaConfBaseException

    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(config)
    try:
        yield
    except OmegaConfBaseException as e:
        raise ConfigError(f"the replayed config cannot be resolved: {_one_line(e)}.") from None
    finally:
        instance.cfg = previous


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({' '.join(str(cause).split())})"
    return text or type(e).__name__
