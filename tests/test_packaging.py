"""`pip install .` (not editable) ships the configs with the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_ships_configs_and_runs_from_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("hydra_mlflow_runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "runner/conf/config.yaml",
        "runner/conf/model/xgb.yaml",
        "runner/conf/dataset/csv.yaml",
        "runner/conf/backend/local.yaml",
        "runner/__main__.py",
        "runner/compare/__main__.py",
        "runner/resources/replay.yaml",
        "runner/resources/lifecycle/default.yaml",
        "models/mlp.py",
    ):
        assert required in names, required
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # Run from the unpacked wheel alone, far from the checkout: configs come from the package.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv.pop(1)); import runner;"
            " assert runner.__file__.startswith(sys.path[0]), runner.__file__;"
            " from runner.__main__ import main; sys.argv[0] = 'runner'; main()",
            str(site),
            "model=rf",
            "--cfg",
            "job",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RandomForest" in proc.stdout and str(ROOT) not in proc.stdout
