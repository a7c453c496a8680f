"""Setting up an Optuna sweep from its config: directions, objectives, study name, sampler,
pruner, warm start, and the check that the search space fits the job's config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import contract
from runner.errors import ConfigError
from runner.sweeps.composer import JobComposer
from runner.sweeps.optuna.space import SearchSpace, format_value

__all__ = [
    "DIRECTIONS",
    "objectives",
    "parse_directions",
    "pruner",
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


def sampler(config: DictConfig, space: SearchSpace, n_existing: int) -> Any:
    """The configured sampler; a resumed study's seed moves on with its trials."""
    from hydra.utils import instantiate

    cfg = OmegaConf.to_container(config.hydra.sweeper.sampler, resolve=True)
    assert isinstance(cfg, dict)
    if cfg.get("seed") is not None:
        # A resumed study must not replay the points it already tried: the seed moves
        # on with the number of trials the study holds.
        cfg["seed"] = int(cfg["seed"]) + n_existing
    if str(cfg.get("_target_", "")).endswith("GridSampler"):
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

    cfg = OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True)
    try:
        return instantiate(cfg)
    except Exception as e:
        raise ConfigError(
            f"the pruner cannot be made: {e.__cause__ or e}. Check hydra.sweeper.pruner.*"
        ) from None


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
