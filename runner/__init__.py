"""Config-driven experiment runner: Hydra configs in, MLflow runs out."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
