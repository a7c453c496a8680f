"""Config schema of ``hydra/sweeper=optuna`` and its ``sampler`` / ``pruner`` groups.

The keys of the official ``hydra-optuna-sweeper`` (``n_trials``, ``n_jobs``, ``direction``,
``storage``, ``study_name``, ``params``, ``max_failure_rate``, ``sampler``) keep their
meaning; the new ones are documented in the README. Hydra imports every module of a
``hydra_plugins`` package when it scans for plugins, which is what registers these nodes.
"""

# No `from __future__ import annotations` here: Hydra's plugin scan executes this module
# without registering it in sys.modules, and dataclasses then cannot resolve string
# annotations (AttributeError in dataclasses._is_type).
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SWEEPER_TARGET = "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper"

# The sampler seed follows the app's root `seed` when it has one: seeded by default.
_SEED = "${oc.select:seed,0}"


@dataclass
class TPESamplerConf:
    """optuna.samplers.TPESampler (the default)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Any = _SEED
    # Optuna 4.3-4.9 deprecated consider_prior, prior_weight, consider_magic_clip,
    # consider_endpoints and warn_independent_sampling: they are not passed.
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False


@dataclass
class RandomSamplerConf:
    """optuna.samplers.RandomSampler."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: Any = _SEED


@dataclass
class CmaEsSamplerConf:
    """optuna.samplers.CmaEsSampler (needs the ``cmaes`` package)."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Any = _SEED
    x0: Any = None
    sigma0: Any = None
    n_startup_trials: int = 1
    independent_sampler: Any = None
    warn_independent_sampling: bool = True
    restart_strategy: Any = None
    inc_popsize: int = 2
    consider_pruned_trials: bool = False
    use_separable_cma: bool = False


@dataclass
class GPSamplerConf:
    """optuna.samplers.GPSampler (Gaussian-process Bayesian optimisation; torch, scipy)."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Any = _SEED
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class QMCSamplerConf:
    """optuna.samplers.QMCSampler (quasi-Monte Carlo)."""

    _target_: str = "optuna.samplers.QMCSampler"
    seed: Any = _SEED
    qmc_type: str = "sobol"
    scramble: bool = True
    warn_independent_sampling: bool = True


@dataclass
class GridSamplerConf:
    """optuna.samplers.GridSampler; the grid is built from the search space (choice, range)."""

    _target_: str = "optuna.samplers.GridSampler"
    seed: Any = _SEED


@dataclass
class NSGAIISamplerConf:
    """optuna.samplers.NSGAIISampler (multi-objective)."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Any = _SEED
    population_size: int = 50
    mutation_prob: Any = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class NopPrunerConf:
    """No pruning (the default)."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    """optuna.pruners.MedianPruner."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    """optuna.pruners.PercentilePruner."""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    """optuna.pruners.HyperbandPruner."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConf:
    """optuna.pruners.SuccessiveHalvingPruner."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper`` when ``hydra/sweeper=optuna``."""

    _target_: str = SWEEPER_TARGET
    # Hydra would otherwise instantiate the sampler (with the unadjusted seed) and the
    # pruner when it instantiates the plugin; the sweep builds them itself.
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    # One direction, or a list for multi-objective. Follows the app's root `direction`
    # when it has one, else Optuna's and the official plugin's default.
    direction: Any = "${oc.select:direction,minimize}"
    # SQLAlchemy URL; a relative SQLite path is relative to the launch dir; null: in-memory.
    storage: Any = "sqlite:///optuna.db"
    # null: derived from the experiment and the search space (same command, same study).
    study_name: Any = None
    # Total trials of the study (resumed studies count their earlier trials).
    n_trials: int = 20
    # Trials run at once on this machine (worker processes when > 1).
    n_jobs: int = 1
    # Seconds between trial heartbeats (RDB storages; null: off). On, a RUNNING trial whose
    # sweep process stopped beating for grace_period (null: 2 x interval) is failed and
    # re-queued by a surviving sweep process, on any machine (SIGKILL, power loss).
    heartbeat_interval: Any = None
    grace_period: Any = None
    # Stop when failed/finished trials exceeds this (0.0: stop at the first failure).
    max_failure_rate: float = 0.0
    # The search space: `key: <Hydra sweep override>`; command-line sweeps win.
    params: Any = None
    # Warm start: parameter sets tried first, before sampling (once per study).
    enqueue: list[Any] = field(default_factory=list)
    # Warm start: try the base config's current values of every swept key first.
    enqueue_defaults: bool = False
    # auto (live line on a terminal, log lines otherwise), rich, log, or none.
    progress: str = "auto"


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="runner")
    samplers = {
        "tpe": TPESamplerConf,
        "random": RandomSamplerConf,
        "cmaes": CmaEsSamplerConf,
        "gp": GPSamplerConf,
        "qmc": QMCSamplerConf,
        "grid": GridSamplerConf,
        "nsgaii": NSGAIISamplerConf,
    }
    for name, node in samplers.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="runner")
    pruners = {
        "none": NopPrunerConf,
        "median": MedianPrunerConf,
        "percentile": PercentilePrunerConf,
        "hyperband": HyperbandPrunerConf,
        "successive_halving": SuccessiveHalvingPrunerConf,
    }
    for name, node in pruners.items():
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="runner")


# Hydra's plugin scan imports this module; registering here is the plugin convention
# (hydra_optuna_sweeper/config.py does the same).
_register()
