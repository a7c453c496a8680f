"""Setting up an Optuna sweep from its config: directions, objectives, study name, sampler,
pruner, warm start, and the check that the search space fits the job's config."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import contract
from runner.errors import ConfigError
from runner.sweeps.composer import JobComposer
from runner.sweeps.optuna.space import SearchSpace, format_value

__all__ = [
    "DIRECTIONS",
    "check_arguments",
    "custom_search_space",
    "objectives",
    "parse_directions",
    "pruner",
    "refuse_overlap",
    "sampler",
    "study_name",
    "target_modules",
    "validate",
    "warm_start",
]

DIRECTIONS = ("minimize", "maximize")


def parse_directions(value: Any) -> list[str]:
    """``hydra.sweeper.direction`` as a list of ``minimize``/``maximize``."""
    raw = list(value) if isinstance(value, list | tuple) else [value]
    out = [str(d).lower() for d in raw]
    bad = [d for d in out if d not in DIRECTIONS]
    if bad or not out:
        raise ConfigError(
            f"hydra.sweeper.direction is {value!r}; each direction must be minimize or "
            "maximize (a list for multi-objective, e.g. '[maximize,minimize]')."
        )
    return out


def objectives(config: DictConfig, directions: list[str]) -> list[str]:
    """The names of the job's objectives, one per direction."""
    objective = OmegaConf.select(config, "objective", default=None)
    if objective is None:
        return [f"value_{i}" for i in range(len(directions))] if len(directions) > 1 else ["value"]
    names = [str(o) for o in objective] if OmegaConf.is_list(objective) else [str(objective)]
    if len(names) != len(directions):
        raise ConfigError(
            f"hydra.sweeper.direction has {len(directions)} direction(s) {directions} but "
            f"the job's objective has {len(names)} ({names}). Give one direction per "
            "objective."
        )
    return names


def study_name(config: DictConfig, space: SearchSpace, directions: list[str]) -> str:
    """``hydra.sweeper.study_name``, else ``<experiment>-<digest of the command>``."""
    if config.hydra.sweeper.study_name:
        return str(config.hydra.sweeper.study_name)
    experiment = OmegaConf.select(config, "experiment_name", default=None) or str(
        config.hydra.job.name
    )
    # The command minus sweeper/hydra knobs, so the same command finds the same study.
    fixed = [o for o in space.fixed if not o.lstrip("+~").startswith(("hydra.", "backend."))]
    probe = SearchSpace(space.distributions, fixed, space.raw)
    return f"{experiment}-{probe.digest(directions)}"


def validate(composer: JobComposer, space: SearchSpace) -> None:
    """Compose one trial's config before anything starts: unknown keys fail here."""
    from optuna.distributions import CategoricalDistribution

    probe = list(space.fixed)
    for key, dist in space.distributions.items():
        value = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
        probe.append(f"{key}={format_value(value)}")
    try:
        # Through the composer: the first trial reuses the template composed here.
        composer.compose(probe)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"the search space does not fit the config: {msg}. Swept keys: "
            f"{', '.join(space.distributions) or '(none)'}. Check them against "
            "`--cfg job` (a key that is not in the config needs +key=...)."
        ) from None


def check_arguments(cfg: dict[Any, Any], *, what: str, built: Collection[str] = ()) -> None:
    """Check a sampler or pruner mapping against its class's constructor; resolve dotted
    paths given for callable arguments.

    Args:
        cfg: The mapping, ``_target_`` included; changed in place.
        what: ``sampler`` or ``pruner``, for the message.
        built: Arguments the sweep passes itself (the grid's ``search_space``).

    Raises:
        ConfigError: The target cannot be imported, or an argument is not one of its
            constructor's; the message names it, the class and the accepted arguments.
    """
    import inspect

    from hydra.utils import get_class, get_method

    target = str(cfg.get("_target_") or "")
    try:
        cls = get_class(target)
    except Exception as e:
        raise ConfigError(
            f"hydra.sweeper.{what}._target_={target!r} cannot be imported: "
            f"{str(e).strip().splitlines()[0]}"
        ) from None
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n not in built]
    unknown = [str(k) for k in cfg if not str(k).startswith("_") and k not in accepted]
    if unknown:
        raise ConfigError(
            f"hydra.sweeper.{what}.{unknown[0]} is not an argument of {target}"
            f"{' (nor ' + ', '.join(unknown[1:]) + ')' if unknown[1:] else ''}. "
            f"It accepts: {', '.join(accepted) or '(none)'}. Check the key, or pick the "
            f"{what} that takes it (hydra/sweeper/{what}=...)."
        )
    for name, value in cfg.items():
        annotation = str(params[name].annotation) if name in params else ""
        if isinstance(value, str) and "Callable" in annotation:
            try:
                cfg[name] = get_method(value)
            except Exception as e:
                raise ConfigError(
                    f"hydra.sweeper.{what}.{name}={value!r} is not an importable function: "
                    f"{str(e).strip().splitlines()[0]}"
                ) from None


def sampler(config: DictConfig, space: SearchSpace, n_existing: int, *, salt: int = 0) -> Any:
    """The configured sampler; a resumed study's seed moves on with its trials.

    ``salt`` (a launched sweep's worker index + 1) moves the seed further, so that workers
    started at once do not all propose the same points.
    """
    from hydra.utils import instantiate

    cfg = OmegaConf.to_container(config.hydra.sweeper.sampler, resolve=True)
    assert isinstance(cfg, dict)
    # The official plugin's grid node is partial (it adds the grid itself); so do we.
    cfg.pop("_partial_", None)
    if cfg.get("seed") is not None:
        # A resumed study must not replay the points it already tried: the seed moves
        # on with the number of trials the study holds.
        cfg["seed"] = int(cfg["seed"]) + n_existing + 1_000_003 * salt
    grid = str(cfg.get("_target_", "")).endswith("GridSampler")
    if grid:
        cfg.pop("search_space", None)
    check_arguments(cfg, what="sampler", built={"search_space"} if grid else set())
    if grid:
        cfg["search_space"] = space.grid()
    try:
        return instantiate(cfg)
    except Exception as e:
        cause = e.__cause__ or e
        raise ConfigError(
            f"the sampler {cfg.get('_target_')} cannot be made: {cause}. Check "
            "hydra.sweeper.sampler.* (for cmaes: pip install cmaes)."
        ) from None


def pruner(config: DictConfig) -> Any:
    """The configured pruner."""
    from hydra.utils import instantiate

    node = OmegaConf.select(config, "hydra.sweeper.pruner", default=None)
    if node is None:  # the official plugin's default: no pruner
        import optuna

        return optuna.pruners.NopPruner()
    cfg = OmegaConf.to_container(node, resolve=True)
    assert isinstance(cfg, dict)
    check_arguments(cfg, what="pruner")
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            # WilcoxonPruner is flagged experimental (Optuna 3.6); chosen by name, it is
            # what the user asked for, and a warning per sweep would only be noise.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return instantiate(cfg)
    except Exception as e:
        raise ConfigError(
            f"the pruner cannot be made: {e.__cause__ or e}. Check hydra.sweeper.pruner.*"
        ) from None


def custom_search_space(config: DictConfig, task_function: Any) -> Callable[..., Any] | None:
    """``hydra.sweeper.custom_search_space``: the official plugin's ``fn(cfg, trial)`` hook.

    A dotted path (``my_pkg.space.configure``, or ``__main__.configure`` for the app's
    script); a leading dot is relative to the app's own module or its directory, as the
    official example writes it (``.custom-search-space-objective.configure``).

    Raises:
        ConfigError: The path does not name a callable.
    """
    path = OmegaConf.select(config, "hydra.sweeper.custom_search_space", default=None)
    if not path:
        return None
    path = str(path)
    try:
        fn = _relative(path, task_function) if path.startswith(".") else None
        if fn is None:
            from hydra.utils import get_method

            fn = get_method(path.lstrip("."))
    except Exception as e:
        raise ConfigError(
            f"hydra.sweeper.custom_search_space={path!r} is not an importable function "
            f"fn(cfg, trial): {str(e).strip().splitlines()[-1]}"
        ) from None
    if not callable(fn):
        raise ConfigError(f"hydra.sweeper.custom_search_space={path!r} is not callable")
    return fn


def refuse_overlap(study: Any, trial: Any, space: SearchSpace) -> None:
    """Refuse a ``custom_search_space`` param that is also a fixed value.

    The official plugin raises ``ValueError("Overlapping fixed parameters and search space
    parameters found!...")`` in ``_configure_trials``: a fixed override would silently win
    over the sampled value, and the study would learn from a value the job never ran. Here
    the trial is voided (it is not a failure of the user's task, and not counted) and the
    sweep stops with a ConfigError; nothing is queued again, since the same config would
    refuse it again.

    Args:
        study: The study ``trial`` belongs to.
        trial: The trial, after the custom search space suggested its params.
        space: The sweep's search space (its fixed overrides).

    Raises:
        ConfigError: Params both fixed and suggested; the message names each with its
            fixed value, and the fix.
    """
    from optuna.trial import TrialState

    from runner.sweeps.optuna import storage as st
    from runner.tracking.redact import redact_override

    fixed = space.fixed_values()
    # `+w` suggested and `w=1` fixed (or the reverse) name the same key.
    overlap = sorted(k for k in trial.params if k.lstrip("+~") in fixed)
    if not overlap:
        return
    shown = ", ".join(redact_override(f"{k}={fixed[k.lstrip('+~')]}") for k in overlap)
    error = ConfigError(
        f"hydra.sweeper.custom_search_space suggested {', '.join(overlap)} in trial "
        f"{trial.number}, which the sweep also fixes: {shown} (a plain value in "
        "hydra.sweeper.params or on the command line). A param is either fixed or searched: "
        "drop the fixed value, or stop suggesting it in the custom search space function "
        "(the official hydra-optuna-sweeper refuses this too: 'Overlapping fixed parameters "
        "and search space parameters found!'). The trial was voided (not counted) and the sweep "
        "stopped."
    )
    storage = study._storage
    storage.set_trial_system_attr(trial._trial_id, contract.VOID_ATTR, True)
    storage.set_trial_system_attr(trial._trial_id, contract.TRIAL_ERROR_ATTR, str(error)[:2000])
    st.tell(study, trial, state=TrialState.FAIL)
    raise error


def _relative(path: str, task_function: Any) -> Any:
    """``.module.fn`` beside the task function's module file (None: not found there)."""
    import importlib.util
    import sys
    from pathlib import Path

    module_name, _, attr = path[1:].rpartition(".")
    module = sys.modules.get(getattr(task_function, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if not module_name or not file:
        return None
    here = Path(file)
    if here.stem == module_name:  # the app's own script
        return getattr(module, attr)
    source = here.parent.joinpath(*module_name.split(".")).with_suffix(".py")
    if not source.is_file():
        return None
    spec = importlib.util.spec_from_file_location(source.stem.replace("-", "_"), source)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, attr)


def warm_start(config: DictConfig, study: Any, space: SearchSpace) -> None:
    """Enqueue ``hydra.sweeper.enqueue`` (and the config's defaults) once per study."""
    from optuna.distributions import CategoricalDistribution

    if study.get_trials(deepcopy=False):
        return  # once per study, not again on resume
    sets: list[dict[str, Any]] = [dict(p) for p in (config.hydra.sweeper.enqueue or [])]
    if config.hydra.sweeper.enqueue_defaults:
        defaults: dict[str, Any] = {}
        choices = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
        for key, dist in space.distributions.items():
            value = (
                choices.get(key) if key in choices else OmegaConf.select(config, key, default=None)
            )
            if value is None:
                continue
            if isinstance(dist, CategoricalDistribution):
                if value in dist.choices:
                    defaults[key] = value
            elif isinstance(value, int | float) and dist.low <= value <= dist.high:
                defaults[key] = value
        if defaults:
            sets.insert(0, defaults)
    for params in sets:
        study.enqueue_trial(params, user_attrs={contract.WARM_START_ATTR: True})


def target_modules(config: DictConfig) -> list[str]:
    """The modules of the model and dataset ``_target_`` a job instantiates (to pre-import)."""
    modules = []
    for key in ("model._target_", "dataset._target_"):
        try:
            target = OmegaConf.select(config, key, default=None)
        except Exception:  # an interpolation only a job can resolve
            continue
        if isinstance(target, str) and "." in target:
            modules.append(target.rsplit(".", 1)[0])
    return modules
