"""Helpers shared by the core tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from runner.config import register


def compose_cfg(overrides: Sequence[str] = (), *, hydra: bool = False) -> DictConfig:
    """Compose the runner's config in-process, as ``python -m runner`` would."""
    register()
    with initialize_config_module("runner.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def runs_of(client, experiment: str) -> list:  # type: ignore[no-untyped-def]
    """Every run of ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], max_results=1000)


def sweeps_into_one_store(
    root: Path,
    template_db: Path,
    sweeps: Mapping[str, Sequence[str]],
    *,
    check: bool = True,
) -> tuple[str, Path, dict[str, subprocess.CompletedProcess[str]]]:
    """A copy of the migrated template store in ``root``, and ``sweeps`` run into it at once.

    Each sweep (launch directory name -> the CLI's arguments) runs in its own launch
    directory ``root/<name>``, two at a time: steady-state concurrent writes to a migrated
    store are fine (a fresh one's migrations race).

    Returns:
        The store's URI, its file, and each sweep's finished process (``check``: each must
        exit 0).
    """
    from tests.conftest import run_cli

    db = root / "mlflow.db"
    shutil.copy(template_db, db)
    uri = f"sqlite:///{db}"
    env = {"MLFLOW_TRACKING_URI": uri}
    with ThreadPoolExecutor(2) as pool:
        futures = {}
        for name, argv in sweeps.items():
            (root / name).mkdir()
            futures[name] = pool.submit(run_cli, *argv, cwd=root / name, env=env, check=check)
        done = {name: f.result() for name, f in futures.items()}
    return uri, db, done
