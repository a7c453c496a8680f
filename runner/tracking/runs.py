"""How a job's run and a sweep's parent run are made: name, tags, params, files.

Names say what sets a run apart (docs/summaries.md): ``xgb-iris lr=0.01`` for a job,
``logreg-iris sweep over lr`` for a grid's parent; never ``backend.*`` or ``hydra.*``.

The callback (:mod:`runner.tracking.callback`) calls these; the Optuna study's parent
(:mod:`runner.tracking.study`) shares the tags and overrides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import contract, interrupts
from runner import trial as trial_mod
from runner.errors import RunnerError, TrackingError
from runner.tracking import provenance
from runner.tracking.job import JobRun, system_metrics_interval
from runner.tracking.params import config_params, public_config
from runner.tracking.parents import SweepParents
from runner.tracking.redact import redact_file, redact_override
from runner.tracking.session import launch_dir, store_for, uri_of
from runner.tracking.settings import experiment_of, settings_of
from runner.tracking.store import Store, public_uri

__all__ = [
    "as_runner_error",
    "common_tags",
    "create_parent",
    "job_artifacts",
    "job_name",
    "logged_overrides",
    "parent_name",
    "redact_hydra_files",
    "start_job",
    "sweep_dir_of",
    "varied_overrides",
]

#: The longest run name the runner makes: MLflow allows 250 characters, the UI's run
#: column shows about 60; a name is for reading, the params hold everything.
NAME_MAX = 80
#: Overrides never named in a run: where runs go (``backend.uri=...`` held a URI, maybe a
#: password, in every name once), how they are logged (``tracking.*``), Hydra's own knobs,
#: and the sweep preset (every run of the sweep has it; the parent is named after it).
_UNNAMED_PREFIXES = ("hydra.", "hydra/", "backend.", "backend/", "tracking.")
_UNNAMED_KEYS = frozenset({"backend", "sweep", "hydra", "tracking"})
#: Config groups named in a run's prefix (``xgb-iris``), so not again among its overrides.
_NAME_GROUPS = ("model", "dataset")


def common_tags(config: DictConfig, store: Store) -> dict[str, str]:
    """The tags every run of the runner carries: provenance, backend, tracking URI."""
    prov = provenance.collect(launch_dir(config))
    tags = prov.tags()
    tags[contract.BACKEND] = str(OmegaConf.select(config, "backend.name", default="local"))
    tags[contract.TRACKING_URI] = public_uri(store.buffered_for or store.uri)
    if store.buffered_for:
        # `python -m runner.sync` replays the run there and removes this tag.
        tags[contract.BUFFERED_FOR] = public_uri(store.buffered_for)
    tags[contract.SOURCE_NAME] = "runner"
    return tags


def logged_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides, secrets redacted (the ``runner.overrides`` tag)."""
    node = OmegaConf.select(config, "hydra.overrides.task", default=None)
    # Unresolved: iterating the node would resolve `+x=${oc.env:VAR}` into the value.
    raw = OmegaConf.to_container(node, resolve=False) if node is not None else []
    return [redact_override(str(o)) for o in raw]  # type: ignore[union-attr]


def create_parent(
    store: Store,
    experiment_id: str,
    config: DictConfig,
    sweep_dir: Path,
    recorded: list[str] | None,
) -> str:
    """Create a sweep's parent run (``recorded``: the sweep's overrides, if known)."""
    # Parents made by a job (a sweep over datasets) name the sweep's overrides, not the job's.
    overrides = recorded if recorded is not None else logged_overrides(config)
    tags = common_tags(config, store)
    tags.update(
        {
            contract.KIND: "sweep",
            contract.SWEEP_DIR: str(sweep_dir.resolve()),
            contract.OVERRIDES: json.dumps(overrides),
        }
    )
    name = parent_name(config, overrides, fallback=sweep_dir.name)
    return store.create_run(experiment_id, name=name, tags=tags)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _named(override: str, *, groups: bool = False) -> bool:
    key = _key(override)
    if not groups and key in _NAME_GROUPS:
        return False
    return not (key in _UNNAMED_KEYS or key.startswith(_UNNAMED_PREFIXES))


def _short(override: str) -> str:
    """``lr=0.012345678`` -> ``lr=0.01235``: a float with four significant digits."""
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if sep and any(c in value for c in ".eE"):
        try:
            number = float(value)
        except ValueError:
            return f"{key}{sep}{value}"
        if number == number and abs(number) != float("inf"):
            value = f"{number:.4g}"
    return f"{key}{sep}{value}"


def _cap(name: str) -> str:
    return name if len(name) <= NAME_MAX else name[: NAME_MAX - 3].rstrip() + "..."


def varied_overrides(
    job: Sequence[str], sweep: Sequence[str] | None, *, groups: bool = False
) -> list[str]:
    """The overrides that name a sweep's job: those not shared with the sweep's command line.

    ``backend.*``, ``hydra.*`` and the sweep preset are left out, and so are the model and
    dataset choices unless ``groups`` (they are a run name's prefix); ``job`` and ``sweep``
    are redacted already. Floats are cut to four significant digits.
    """
    # By key: Hydra writes a job's values its own way (`false` on the command line is
    # `False` in a grid job's overrides).
    fixed = {_key(o) for o in sweep or () if not _is_sweep(o)}
    return [_short(o) for o in job if _key(o) not in fixed and _named(o, groups=groups)]


def job_name(choices: Mapping[str, Any], overrides: Sequence[str]) -> str:
    """A job's run name: ``<model>-<dataset>`` and what sets it apart (``xgb-iris lr=0.01``)."""
    prefix = f"{choices.get('model') or 'model'}-{choices.get('dataset') or 'data'}"
    return _cap(" ".join([prefix, *overrides]))


def _is_sweep(override: str) -> bool:
    """Whether an override sweeps (``a,b``, ``range(...)``, ``interval(...)``...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return bool(OverridesParser.create().parse_override(override).is_sweep_override())
    except Exception:  # a redacted or odd value: a comma list is a sweep
        return "," in override.partition("=")[2]


def _swept_keys(overrides: Sequence[str], params: Mapping[str, Any] | None) -> list[str]:
    keys = [_key(o) for o in overrides if _is_sweep(o)]
    keys += [str(k) for k in (params or {}) if str(k) not in keys]
    return [k for k in keys if not k.startswith(_UNNAMED_PREFIXES) and k not in _UNNAMED_KEYS]


def parent_name(config: DictConfig, overrides: Sequence[str], *, fallback: str = "") -> str:
    """A sweep's parent run name: its preset (``sweep=xgb_iris``), else what it varies
    (``logreg-iris sweep over lr, seed``); never ``backend.*`` or ``hydra.*``."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None)
    choices = OmegaConf.to_container(choices) if choices is not None else {}
    raw = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    found = OmegaConf.to_container(raw, resolve=False) if raw is not None else None
    params = {str(k): v for k, v in found.items()} if isinstance(found, dict) else {}
    keys = _swept_keys(overrides, params)
    preset = choices.get("sweep") if isinstance(choices, dict) else None
    if preset:
        cli = [k for k in _swept_keys(overrides, None) if k not in params]
        return _cap(f"{preset} sweep" + (f" over {', '.join(cli)}" if cli else ""))
    groups = [
        str(choices.get(g))
        for g in _NAME_GROUPS
        if isinstance(choices, dict) and choices.get(g) and g not in keys
    ]
    prefix = "-".join(groups) or fallback or "sweep"
    return _cap(f"{prefix} sweep over {', '.join(keys)}" if keys else f"{prefix} sweep")


def sweep_dir_of(config: DictConfig) -> Path:
    """The sweep's directory (``hydra.sweep.dir``), absolute from the launch directory.

    A relative sweep dir (Hydra's default ``multirun/...``) read inside a job that changed
    directory (``hydra.job.chdir=True``, the default of older apps) would name a folder under
    the job's own, and each job would find no parent there and make its own.
    """
    path = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
    return path if path.is_absolute() else Path(launch_dir(config)) / path


def redact_hydra_files(config: DictConfig) -> None:
    """Redact the ``.hydra`` files and ``multirun.yaml`` Hydra wrote for this job."""
    # Hydra writes the raw overrides (secrets included) before any callback runs.
    out = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
    sub = OmegaConf.select(config, "hydra.output_subdir", default=None)
    if out and sub:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            redact_file(Path(out) / str(sub) / name)
    if OmegaConf.select(config, "hydra.mode", default=None) is not None and str(
        config.hydra.mode
    ).endswith("MULTIRUN"):
        redact_file(sweep_dir_of(config) / "multirun.yaml")


def job_artifacts(
    config: DictConfig, public: dict[str, Any], prov: provenance.Provenance
) -> dict[str, str]:
    """The files a job's run gets: its resolved config, Hydra's files, the git diff."""
    import yaml

    files = {"config.yaml": yaml.safe_dump(public, sort_keys=False)}
    out = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
    sub = OmegaConf.select(config, "hydra.output_subdir", default=None)
    if out and sub:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            path = Path(out) / str(sub) / name
            if path.is_file():
                files[f".hydra/{name}"] = path.read_text(encoding="utf-8")
    if prov.git_dirty and prov.git_diff:
        files["provenance/git_diff.patch"] = prov.git_diff
    return files


def start_job(config: DictConfig) -> JobRun:
    """Create the job's run (nested under its sweep's parent) with params and files.

    Raises:
        TrackingError: The store cannot be reached or refused a write.
    """
    store = store_for(uri_of(config), config)
    exp_id = store.experiment_id(experiment_of(config))
    hc = config.hydra
    multirun = str(hc.mode).endswith("MULTIRUN")
    parent = None
    if multirun:
        sweep_dir = sweep_dir_of(config)
        parent = SweepParents(sweep_dir).get_or_create(
            store.uri, exp_id, lambda rec: create_parent(store, exp_id, config, sweep_dir, rec)
        )
    choices: Mapping[str, Any] = OmegaConf.to_container(hc.runtime.choices)  # type: ignore[assignment]
    # The logged config.yaml and the params come from one resolved, redacted copy.
    public = public_config(config, skip=frozenset({"hydra"}))
    params = config_params(public, choices)
    settings = settings_of(config)
    if settings is not None and settings.exclude:
        params = {k: v for k, v in params.items() if not settings.excluded(k)}
    prov = provenance.collect(launch_dir(config))
    tags = common_tags(config, store)
    overrides = logged_overrides(config)
    tags.update(
        {
            contract.KIND: "job",
            contract.OVERRIDES: json.dumps(overrides),
            contract.SEED: str(OmegaConf.select(config, "seed", default="")),
            contract.OUTPUT_DIR: str(hc.runtime.output_dir),
        }
    )
    trial = trial_mod.current()
    if trial is not None:
        tags[contract.TRIAL_NUMBER] = str(trial.number)
        tags[contract.STUDY] = trial.ref.study_name
    if multirun:
        tags[contract.JOB_NUM] = str(hc.job.num)
        varied = varied_overrides(overrides, SweepParents(sweep_dir_of(config)).overrides())
        name = job_name(choices, varied or [f"#{hc.job.num}"])
    else:
        name = job_name(choices, varied_overrides(overrides, None))
    run_id: str | None = None
    try:
        # A kill between creating the run and holding its id would leave it RUNNING.
        with interrupts.held():
            run_id = store.create_run(exp_id, name=name, tags=tags, parent_id=parent)
        store.log_batch(run_id, params=params)
        store.log_files(run_id, job_artifacts(config, public, prov))
        store.activate(run_id, system_metrics=system_metrics_interval(config))
        flush = OmegaConf.select(config, "tracking.flush_every_s", default=10.0)
        return JobRun(store, run_id, flush_every_s=float(flush))
    except BaseException as e:
        # Ctrl-C or SIGTERM while the run is being set up is a kill, not a failure.
        if run_id is not None:
            store.end_run(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def as_runner_error(e: BaseException) -> BaseException:
    """``e`` as a :class:`RunnerError` the job can raise (interrupts stay as they are)."""
    if isinstance(e, RunnerError) or not isinstance(e, Exception):
        return e
    err = TrackingError(f"MLflow tracking could not start: {type(e).__name__}: {e}")
    err.__cause__ = e
    return err
