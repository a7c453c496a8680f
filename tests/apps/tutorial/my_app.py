"""A Hydra tutorial-style app (a `db` group, `version_base=None`: Hydra's old defaults,
`hydra.job.chdir=True` and a relative sweep dir), as a user brings it: nothing of the
runner's config keys. Its task logs per-epoch losses through the public API and returns
the objective.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from runner import tracking


@hydra.main(version_base=None, config_path="conf", config_name="config")
def my_app(cfg: DictConfig) -> float:
    for epoch in range(3):
        tracking.log_metrics({"loss": cfg.x / (epoch + 1)}, step=epoch)
    tracking.set_tags({"app": "tutorial"})
    if cfg.get("fail"):
        raise ValueError("the task failed on purpose")
    return float((cfg.x - 0.3) ** 2)


if __name__ == "__main__":
    my_app()
