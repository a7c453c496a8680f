"""Config schema of ``hydra/sweeper=grid``: the keys of Hydra's ``basic`` sweeper.

No ``from __future__ import annotations``: Hydra's plugin scan runs this module without
registering it in sys.modules, and dataclasses then cannot resolve string annotations.
"""

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class GridSweeperConf:
    """Hydra's ``BasicSweeperConf``, with this plugin's sweeper as the target."""

    _target_: str = "hydra_plugins.runner_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 - see the module docstring
    params: Optional[dict[str, str]] = None  # noqa: UP045
    # The summary printed when the sweep (or a single run) ends: `none` keeps it quiet;
    # auto, rich and log print it (the same values as the Optuna sweeper's progress).
    progress: str = "auto"


ConfigStore.instance().store(
    group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="runner"
)
