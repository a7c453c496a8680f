"""Config schema of ``hydra/launcher=ray``.

No ``from __future__ import annotations``: Hydra's plugin scan runs this module without
registering it in sys.modules, and dataclasses then cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RayLauncherConf:
    """Where the jobs run and what each one asks of the cluster (docs/scale-out-engines.md)."""

    _target_: str = "hydra_plugins.runner_ray_launcher.ray_launcher.RayLauncher"
    # null: start a local Ray cluster in the launching process (ray.init()); "auto": the
    # cluster `ray start` runs on this machine; "host:port" (the head's GCS port) or
    # "ray://host:10001" (Ray Client) for another one.
    address: Optional[str] = None  # noqa: UP045 - see the module docstring
    # Resources each job (one Ray task) reserves: Ray runs as many at once as they allow.
    num_cpus: float = 1
    num_gpus: float = 0
    # Custom resources per job, e.g. {"bigmem": 1}.
    resources: dict[str, float] = field(default_factory=dict)
    # Ray retries a task whose worker died; a retried job would log a second MLflow run.
    max_retries: int = 0
    # More options of each task (`ray.remote(...).options(**remote)`): memory, scheduling, ...
    remote: dict[str, Any] = field(default_factory=dict)
    # Ctrl-C/SIGTERM: seconds the cancelled jobs get to end their own runs before they are
    # force-cancelled (their workers killed); the launching process ends what is left KILLED.
    cancel_wait_s: float = 10.0
    # Keyword arguments of ray.init(), e.g. {num_cpus: 2} for a local cluster, or
    # {runtime_env: {env_vars: {...}}} for what the jobs need on a remote one.
    init: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher", name="ray", node=RayLauncherConf, provider="runner"
)
