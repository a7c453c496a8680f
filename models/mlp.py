"""A small torch MLP with scikit-learn's fit/predict API.

Standardisation of the inputs (and, for regression, of the target) lives inside the torch
module as buffers, so the exported module takes raw features: MLflow's pytorch flavor can
serve it as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from torch import nn

__all__ = ["EpochCallback", "MLPClassifier", "MLPRegressor"]

#: Called after each epoch with the epoch index and that epoch's metrics. It may raise to
#: stop training (a pruned Optuna trial does exactly that).
EpochCallback = Callable[[int, dict[str, float]], None]


class _Affine(nn.Module):
    """``(x - shift) / scale`` with fitted buffers (or its inverse)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, shift: np.ndarray, scale: np.ndarray, *, inverse: bool = False) -> None:
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverse:
            return x * self.scale + self.shift
        return (x - self.shift) / self.scale


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


class _MLPBase(BaseEstimator):
    _is_classifier = False

    def __init__(
        self,
        *,
        hidden_sizes: Sequence[int] = (64, 64),
        epochs: int = 50,
        lr: float = 0.05,
        batch_size: int = 32,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str = "cpu",
        n_threads: int = 1,
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.seed = seed
        self.device = device
        self.n_threads = n_threads

    # -- subclass hooks -------------------------------------------------------------------
    def _prepare_target(self, y: np.ndarray) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _output_layers(self, y: np.ndarray) -> list[nn.Module]:
        return []

    def _learn_target(self, y: np.ndarray) -> None:
        """Fit what the target encoding needs (the classes) before training."""

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        on_epoch_end: EpochCallback | None = None,
    ) -> _MLPBase:
        """Train with minibatch SGD (Nesterov momentum).

        Args:
            X: Training features.
            y: Training target.
            X_val: Optional validation features, for the per-epoch ``val_loss``.
            y_val: Optional validation target.
            on_epoch_end: Called after each epoch with ``train_loss``, ``val_loss`` (when a
                validation set is given) and ``epoch_time_s``.
        """
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"epochs={self.epochs}, batch_size={self.batch_size} and lr={self.lr} must be "
                "positive"
            )
        device = _resolve_device(self.device)
        if device.type == "cpu":
            # Bitwise-reproducible on CPU: replay --check compares metrics exactly.
            torch.use_deterministic_algorithms(True)
            # A small MLP is dominated by per-op overhead: on a busy 2-core machine two
            # threads made 200 epochs on iris 15x slower than one (27 s against 1.8 s).
            torch.set_num_threads(max(1, int(self.n_threads)))
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        X = np.asarray(X, dtype=np.float32)
        self._learn_target(np.asarray(y))
        target, n_out = self._prepare_target(np.asarray(y))
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        layers: list[nn.Module] = [_Affine(mean, std)]
        width = X.shape[1]
        for h in self.hidden_sizes:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, n_out))
        layers += self._output_layers(np.asarray(y))
        self.module_ = nn.Sequential(*layers).to(device)
        self.n_features_in_ = X.shape[1]
        opt = torch.optim.SGD(
            self.module_.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.momentum > 0,
            weight_decay=self.weight_decay,
        )
        xt = torch.from_numpy(X).to(device)
        yt = target.to(device)
        val: tuple[torch.Tensor, torch.Tensor] | None = None
        if X_val is not None and y_val is not None:
            val = (
                torch.from_numpy(np.asarray(X_val, dtype=np.float32)).to(device),
                self._prepare_target(np.asarray(y_val))[0].to(device),
            )
        n = len(xt)
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.epochs):
            start = time.perf_counter()
            self.module_.train()
            perm = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for i in range(0, n, self.batch_size):
                idx = perm[i : i + self.batch_size]
                opt.zero_grad()
                loss = self._loss(self.module_(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            metrics = {"train_loss": total / n}
            if val is not None:
                self.module_.eval()
                with torch.no_grad():
                    metrics["val_loss"] = float(self._loss(self.module_(val[0]), val[1]))
            metrics["epoch_time_s"] = time.perf_counter() - start
            if not np.isfinite(metrics["train_loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (train_loss={metrics['train_loss']}); "
                    f"lower the learning rate (lr={self.lr})"
                )
            self.history_.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        self.module_.eval()
        return self

    def _forward(self, X: np.ndarray) -> np.ndarray:
        device = next(self.module_.parameters()).device
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(X, dtype=np.float32)).to(device)
            return self.module_(x).cpu().numpy()


class MLPClassifier(ClassifierMixin, _MLPBase):
    """Multi-class MLP classifier (cross-entropy loss)."""

    def _prepare_target(self, y: np.ndarray) -> tuple[torch.Tensor, int]:
        idx = np.searchsorted(self.classes_, y)
        return torch.as_tensor(idx, dtype=torch.long), len(self.classes_)

    def _learn_target(self, y: np.ndarray) -> None:
        self.classes_ = np.unique(y)

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, target)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, one column per entry of ``classes_``."""
        # float64: float32 probabilities miss summing to one by more than sklearn allows.
        logits = self._forward(X).astype(np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class label."""
        return self.classes_[self._forward(X).argmax(axis=1)]


class MLPRegressor(RegressorMixin, _MLPBase):
    """MLP regressor (mean squared error on the standardised target)."""

    def _prepare_target(self, y: np.ndarray) -> tuple[torch.Tensor, int]:
        return torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1), 1

    def _output_layers(self, y: np.ndarray) -> list[nn.Module]:
        y = np.asarray(y, dtype=np.float32)
        self._y_scale = float(y.std()) or 1.0
        return [_Affine(np.array([y.mean()]), np.array([self._y_scale]), inverse=True)]

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The module predicts in target units; the loss is on the standardised scale so
        # that the learning rate means the same for every dataset.
        return nn.functional.mse_loss(out, target) / (self._y_scale**2)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted target values."""
        return self._forward(X)[:, 0]
