"""Provenance of a job: git state, Python and key package versions.

Computed once per process: a sweep of a hundred jobs runs git once.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from runner import contract

__all__ = ["KEY_PACKAGES", "Provenance", "collect"]

#: Distributions whose versions can change a result; each alternative is tried in order
#: (xgboost ships as `xgboost` or `xgboost-cpu`).
KEY_PACKAGES: dict[str, tuple[str, ...]] = {
    "hydra-mlflow-runner": ("hydra-mlflow-runner",),
    "hydra-core": ("hydra-core",),
    "omegaconf": ("omegaconf",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "optuna": ("optuna",),
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "scikit-learn": ("scikit-learn",),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "torch": ("torch",),
}


@dataclass(frozen=True)
class Provenance:
    """Where a job's code came from.

    Attributes:
        git_commit: ``HEAD`` of the launch directory's repository, or None outside git.
        git_dirty: Whether tracked files differ from ``HEAD``.
        git_diff: ``git diff HEAD`` when dirty, else empty.
        python: Python version.
        packages: Installed versions of :data:`KEY_PACKAGES` (missing ones left out).
    """

    git_commit: str | None
    git_dirty: bool
    git_diff: str
    python: str
    packages: dict[str, str]

    def tags(self) -> dict[str, str]:
        """The provenance as MLflow tags (the diff goes to an artifact instead)."""
        tags = {contract.PYTHON: self.python}
        if self.git_commit:
            tags[contract.GIT_COMMIT] = self.git_commit
            tags[contract.GIT_DIRTY] = str(self.git_dirty).lower()
            # MLflow's own key, so the UI shows the commit too.
            tags[contract.SOURCE_GIT_COMMIT] = self.git_commit
        tags.update({f"{contract.PKG_PREFIX}{name}": v for name, v in self.packages.items()})
        return tags


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=8)
def collect(cwd: str) -> Provenance:
    """Collect the provenance of code launched from ``cwd`` (cached per process)."""
    path = Path(cwd)
    commit = _git(path, "rev-parse", "HEAD")
    diff = ""
    dirty = False
    if commit:
        status = _git(path, "status", "--porcelain", "--untracked-files=no")
        dirty = bool(status and status.strip())
        if dirty:
            diff = _git(path, "diff", "HEAD") or ""
    packages = {name: v for name, dists in KEY_PACKAGES.items() if (v := _version(dists))}
    return Provenance(
        git_commit=commit.strip() if commit else None,
        git_dirty=dirty,
        git_diff=diff,
        python=platform.python_version(),
        packages=packages,
    )
