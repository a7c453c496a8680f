"""Every example sweep in multirun_examples/ runs as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers import runs_of

EXAMPLES = ROOT / "multirun_examples"
FAST = ["tracking.log_model=false", "tracking.log_figures=false"]


def _run(name: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(EXAMPLES / name / "run.sh"), *FAST, *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_every_example_has_a_readme_and_a_test() -> None:
    names = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert names == ["failing_job", "lr_grid", "models_by_datasets"]
    for name in names:
        assert (EXAMPLES / name / "README.md").is_file()


def _by_kind(runs: list) -> dict[str, list]:  # type: ignore[type-arg]
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for r in runs:
        out.setdefault(r.data.tags["runner.kind"], []).append(r)
    return out


def test_lr_grid(tracking_uri: str, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    proc = _run("lr_grid", workdir, "model.n_estimators=10")
    assert proc.returncode == 0, proc.stderr
    kinds = _by_kind(runs_of(client, "iris"))
    assert len(kinds["sweep"]) == 1 and len(kinds["job"]) == 3
    assert sorted(r.data.params["lr"] for r in kinds["job"]) == ["0.01", "0.05", "0.3"]


def test_models_by_datasets(tracking_uri: str, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    proc = _run("models_by_datasets", workdir)
    assert proc.returncode == 0, proc.stderr
    for dataset in ("iris", "wine"):
        kinds = _by_kind(runs_of(client, dataset))
        assert len(kinds["sweep"]) == 1
        models = sorted(r.data.params["model"] for r in kinds["job"])
        assert models == ["logreg", "mlp", "rf", "xgb"]
        parent = kinds["sweep"][0].info.run_id
        assert {r.data.tags["mlflow.parentRunId"] for r in kinds["job"]} == {parent}
        assert {r.info.status for r in kinds["sweep"] + kinds["job"]} == {"FINISHED"}


def test_failing_job(tracking_uri: str, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    proc = _run("failing_job", workdir, "model.epochs=5")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the script checks the sweep's 1
    assert "training diverged" in proc.stderr and "Traceback" not in proc.stderr
    kinds = _by_kind(runs_of(client, "iris"))
    assert [r.info.status for r in kinds["sweep"]] == ["FAILED"]
    by_lr = {r.data.params["lr"]: r for r in kinds["job"]}
    assert {lr: r.info.status for lr, r in by_lr.items()} == {
        "0.01": "FINISHED",
        "1000000.0": "FAILED",
        "0.1": "FINISHED",
    }
    assert "training diverged" in by_lr["1000000.0"].data.tags["runner.error"]
