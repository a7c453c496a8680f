"""Config schema of ``hydra/sweeper=optuna`` and its ``sampler`` / ``pruner`` groups.

The keys of the official ``hydra-optuna-sweeper`` (``n_trials``, ``n_jobs``, ``direction``,
``storage``, ``study_name``, ``params``, ``max_failure_rate``, ``sampler``, ``pruner``,
``custom_search_space``) keep their meaning; the new ones are documented in the README.
Hydra imports every module of a ``hydra_plugins`` package when it scans for plugins, which
is what registers these nodes (also as ``hydra/sweeper=runner_optuna``, a name the official
plugin cannot take over).
"""

# No `from __future__ import annotations` here: Hydra's plugin scan executes this module
# without registering it in sys.modules, and dataclasses then cannot resolve string
# annotations (AttributeError in dataclasses._is_type).
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SWEEPER_TARGET = "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper"

# The sampler seed follows the app's root `seed` when it has one: seeded by default.
_SEED = "${oc.select:seed,0}"


# Every argument of the installed Optuna's constructors, with Optuna's default unless the
# comment says otherwise (tests/test_optuna_dropin.py compares them with inspect.signature,
# so a new Optuna release cannot drift silently). The nodes are stored as plain mappings:
# a config written for the official plugin (or naming an argument of another sampler) is
# checked by runner.sweeps.optuna.setup, whose error names the argument, the sampler and
# the accepted arguments. Callable arguments take a `_target_` node or a dotted path.


@dataclass
class TPESamplerConf:
    """optuna.samplers.TPESampler (the default)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Any = _SEED
    # Deprecated by Optuna 4.3-4.9 (None: not passed, no warning); the official plugin's
    # configs set them, and Optuna still takes them.
    consider_prior: Any = None
    prior_weight: Any = None
    consider_magic_clip: Any = None
    consider_endpoints: Any = None
    warn_independent_sampling: Any = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    gamma: Any = None
    weights: Any = None
    multivariate: Any = False  # the official plugin's default (Optuna's: None)
    group: bool = False
    constant_liar: bool = False  # the official plugin's (Optuna 5's: True)
    constraints_func: Any = None


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
    consider_pruned_trials: bool = False
    restart_strategy: Any = None
    popsize: Any = None
    inc_popsize: int = 2  # the official plugin's (Optuna 5's: -1)
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    source_trials: Any = None


@dataclass
class GPSamplerConf:
    """optuna.samplers.GPSampler (Gaussian-process Bayesian optimisation; torch, scipy)."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Any = _SEED
    independent_sampler: Any = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Any = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConf:
    """optuna.samplers.QMCSampler (quasi-Monte Carlo)."""

    _target_: str = "optuna.samplers.QMCSampler"
    seed: Any = _SEED
    qmc_type: str = "sobol"
    scramble: bool = True  # the official plugin's (Optuna's: False)
    independent_sampler: Any = None
    warn_asynchronous_seeding: bool = True
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
    mutation: Any = None
    mutation_prob: Any = None
    crossover: Any = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Any = None
    elite_population_selection_strategy: Any = None
    child_generation_strategy: Any = None
    after_trial_strategy: Any = None


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
    percentile: float = 25.0  # required by Optuna
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
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:
    """optuna.pruners.SuccessiveHalvingPruner."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConf:
    """optuna.pruners.ThresholdPruner: prune a trial whose value leaves [lower, upper]."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Any = None
    upper: Any = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class PatientPrunerConf:
    """optuna.pruners.PatientPruner: the wrapped pruner acts after ``patience`` flat steps."""

    _target_: str = "optuna.pruners.PatientPruner"
    # Both required by Optuna: a median pruner wrapped, three steps without improvement.
    wrapped_pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    patience: int = 3
    min_delta: float = 0.0


@dataclass
class WilcoxonPrunerConf:
    """optuna.pruners.WilcoxonPruner: a paired test against the best trial's steps."""

    _target_: str = "optuna.pruners.WilcoxonPruner"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


SAMPLERS: dict[str, Any] = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "gp": GPSamplerConf,
    "qmc": QMCSamplerConf,
    "grid": GridSamplerConf,
    "nsgaii": NSGAIISamplerConf,
}
PRUNERS: dict[str, Any] = {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "hyperband": HyperbandPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "threshold": ThresholdPrunerConf,
    "patient": PatientPrunerConf,
    "wilcoxon": WilcoxonPrunerConf,
}


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
    # With a launcher (hydra/launcher=slurm, submitit_local, joblib, ray): how many worker
    # jobs it runs; each asks the shared storage for trials until the study holds n_trials.
    n_workers: int = 1
    # Set by the sweep on the worker jobs it launches (their own runs are not logged).
    worker: Any = None
    # Seconds between trial heartbeats (RDB storages; null: off). On, a RUNNING trial whose
    # sweep process stopped beating for grace_period (null: 2 x interval) is failed and
    # re-queued by a surviving sweep process, on any machine (SIGKILL, power loss).
    heartbeat_interval: Any = None
    grace_period: Any = None
    # Stop when failed/finished trials exceeds this (0.0: stop at the first failure).
    max_failure_rate: float = 0.0
    # The search space: `key: <Hydra sweep override>`; command-line sweeps win.
    params: Any = None
    # Hydra 1.1's search space (deprecated, still read by the official plugin):
    # `key: {type: float|int, low, high, step, log}` or `{type: categorical, choices}`;
    # each entry is read as the params override it equals (params win on a shared key).
    search_space: Any = None
    # Warm start: parameter sets tried first, before sampling (once per study).
    enqueue: list[Any] = field(default_factory=list)
    # Warm start: try the base config's current values of every swept key first.
    enqueue_defaults: bool = False
    # The official plugin's define-by-run hook: a dotted path to fn(cfg, trial) that may
    # suggest more params (`+key` for a key the config lacks); a leading dot is relative to
    # the app's own script (the official example's `.custom-search-space-objective.configure`).
    custom_search_space: Any = None
    # auto (live line on a terminal, log lines otherwise), rich, log, or none.
    progress: str = "auto"


OFFICIAL = "hydra_plugins.hydra_optuna_sweeper"


class PluginConflictWarning(UserWarning):
    """The official hydra-optuna-sweeper is installed beside this project's sweeper."""


def _official_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(OFFICIAL) is not None
    except (ImportError, ValueError):
        return False


def _register() -> None:
    cs = ConfigStore.instance()
    # `runner_optuna` always names this sweeper; `optuna` is the drop-in name, which the
    # official plugin registers too.
    for name in ("optuna", "runner_optuna"):
        cs.store(group="hydra/sweeper", name=name, node=OptunaSweeperConf, provider="runner")
    # Plain mappings, not typed nodes: unknown arguments reach setup.sampler/pruner, whose
    # error lists the accepted ones (a typed node would only say "Key ... not in ...").
    for name, node in SAMPLERS.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=asdict(node()), provider="runner")
    for name, node in PRUNERS.items():
        cs.store(group="hydra/sweeper/pruner", name=name, node=asdict(node()), provider="runner")
    if _official_installed():
        # Both register hydra/sweeper=optuna and its sampler/pruner options; whichever
        # Hydra's plugin scan reaches last would win, silently.
        warnings.warn(
            "two Optuna sweeper plugins are installed: this project's "
            "(hydra_plugins.runner_optuna_sweeper) and the official hydra-optuna-sweeper "
            f"({OFFICIAL}). Both register hydra/sweeper=optuna and its sampler and pruner "
            "options, and the one Hydra's plugin scan loads last wins. Use "
            "hydra/sweeper=runner_optuna for this project's sweeper, or uninstall one: "
            "pip uninstall hydra-optuna-sweeper.",
            PluginConflictWarning,
            stacklevel=1,
        )


# Hydra's plugin scan imports this module; registering here is the plugin convention
# (hydra_optuna_sweeper/config.py does the same).
_register()
