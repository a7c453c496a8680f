"""A structured-config app (a dataclass schema in Hydra's ConfigStore, no YAML) whose task is
a small torch training loop: it reports each epoch's loss to the runner's public API and to
Optuna's pruner (`runner.trial`), and returns the final loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore

from runner import tracking, trial


@dataclass
class Optim:
    lr: float = 0.05
    momentum: float = 0.0


@dataclass
class TrainConfig:
    optim: Optim
    epochs: int = 6
    seed: int = 0


ConfigStore.instance().store(name="train", node=TrainConfig(optim=Optim()))


@hydra.main(version_base="1.3", config_name="train")
def train(cfg: TrainConfig) -> float:
    import torch

    torch.manual_seed(cfg.seed)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    loss = torch.tensor(0.0)
    for epoch in range(cfg.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
        tracking.log_metrics({"train_loss": float(loss)}, step=epoch)
        trial.report(float(loss), epoch, lower_is_better=True)
        if trial.should_prune():
            raise trial.pruned()
    return float(loss)


if __name__ == "__main__":
    train()
