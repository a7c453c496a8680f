"""Helpers shared by the core tests."""

from __future__ import annotations

from collections.abc import Sequence

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
