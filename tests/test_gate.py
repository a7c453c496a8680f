"""``python -m runner.gate``: a candidate run against a baseline, on runs of the real runner.

One store per module: a 2-job logreg grid on iris (C=0.01 is clearly worse than C=1.0), its
best run tagged and registered as ``iris-clf@champion`` by ``runner.compare``. The gate only
reads, so the tests share it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner import compare, gate
from tests.conftest import run_cli

FAST = ("tracking.log_figures=false", "tracking.log_importances=false")


@dataclass
class Built:
    uri: str
    good: str  # C=1.0: the best, tagged and registered
    bad: str  # C=0.01
    acc: dict[str, float]  # run id -> val_accuracy


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> Built:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("gate")
    shutil.copy(_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_cli("-m", "model.C=0.01,1.0", *FAST, cwd=root, env={"MLFLOW_TRACKING_URI": uri})
    argv = ["--experiment", "iris", "--tag-best", "--register-best", "iris-clf"]
    assert compare.main([*argv, "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("iris").experiment_id
    runs = {r.data.params["model.C"]: r for r in client.search_runs([exp], "params.seed = '0'")}
    good, bad = runs["1.0"], runs["0.01"]
    assert good.data.metrics["val_accuracy"] > bad.data.metrics["val_accuracy"] + 0.05
    assert good.data.tags["runner.best"] == "true"
    return Built(
        uri=uri,
        good=good.info.run_id,
        bad=bad.info.run_id,
        acc={r.info.run_id: r.data.metrics["val_accuracy"] for r in runs.values()},
    )


def _gate(capsys: pytest.CaptureFixture[str], built: Built, *argv: str) -> tuple[int, str, str]:
    rc = gate.main([*argv, "--tracking-uri", built.uri])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _row(out: str, metric: str) -> list[str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(f"{metric} ")]
    return line.split()


@pytest.mark.parametrize("baseline", ["champion:iris-clf", "models:/iris-clf@champion", "best"])
def test_a_worse_candidate_fails_against_each_kind_of_baseline(
    built: Built, capsys: pytest.CaptureFixture[str], baseline: str
) -> None:
    rc, out, _ = _gate(
        capsys, built, "--run", built.bad, "--baseline", baseline,
        "--metric", "val_accuracy", "--max-drop", "0.01",
    )  # fmt: skip
    assert rc == 1, out
    row = _row(out, "val_accuracy")
    assert row[1] == "higher" and row[-1] == "REGRESSION", row
    assert float(row[2]) == pytest.approx(built.acc[built.good], abs=1e-3)
    assert float(row[3]) == pytest.approx(built.acc[built.bad], abs=1e-3)
    assert built.good in out and "gate: FAILED: 1 of 1 metrics regressed" in out


def test_within_the_allowed_drop_passes(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    drop = built.acc[built.good] - built.acc[built.bad]
    argv = ["--run", built.bad, "--baseline", built.good, "--metric", "val_accuracy"]
    rc, out, _ = _gate(capsys, built, *argv, "--max-drop", f"{drop + 0.001:.6f}")
    assert rc == 0, out
    assert _row(out, "val_accuracy")[-1] == "ok"
    assert "gate: passed" in out
    # Just below the drop it fails; relative drops are fractions of the baseline.
    assert _gate(capsys, built, *argv, "--max-drop", f"{drop - 0.001:.6f}")[0] == 1
    pct = 100 * drop / built.acc[built.good]
    assert _gate(capsys, built, *argv, "--max-drop", f"{pct + 0.5:.3f}%")[0] == 0
    assert _gate(capsys, built, *argv, "--max-drop", f"{pct - 0.5:.3f}%")[0] == 1


def test_direction_from_the_name_or_the_option(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    # The better run as the candidate: its log loss is lower, which is better for a loss.
    rc, out, _ = _gate(
        capsys, built, "--run", built.good, "--baseline", built.bad,
        "--metric", "val_accuracy", "--metric", "val_log_loss",
    )  # fmt: skip
    assert rc == 0, out
    assert _row(out, "val_log_loss")[1:2] == ["lower"]
    # Said the other way round, the lower loss is a regression.
    rc, out, _ = _gate(
        capsys, built, "--run", built.good, "--baseline", built.bad,
        "--metric", "val_log_loss", "--higher-is-better",
    )  # fmt: skip
    assert rc == 1, out
    assert _row(out, "val_log_loss")[1] == "higher"
    rc, out, _ = _gate(
        capsys, built, "--run", built.bad, "--baseline", built.good,
        "--metric", "val_accuracy", "--lower-is-better",
    )  # fmt: skip
    assert rc == 0, out


def test_the_candidate_as_its_own_baseline_passes_with_a_note(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _gate(
        capsys, built, "--run", built.good, "--baseline", "best", "--metric", "val_accuracy"
    )
    assert rc == 0, out
    assert "the candidate is the baseline itself" in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--run", "0" * 32, "--baseline", "best", "--metric", "x"], "not a run in this"),
        (["--run", "no such/run", "--baseline", "best", "--metric", "x"], "not a run id"),
        (["--run", "GOOD", "--baseline", "best", "--metric", "val_nothing"], "has no metric"),
        (
            ["--run", "GOOD", "--baseline", "staging:iris-clf", "--metric", "val_accuracy"],
            "has no alias 'staging'",
        ),
        (
            ["--run", "GOOD", "--baseline", "champion:other", "--metric", "val_accuracy"],
            "--register-best other",
        ),
        (["--run", "GOOD", "--baseline", "BAD"], "no metric to compare"),
        (["--run", "GOOD", "--baseline", "BAD", "--max-drop", "0.1"], "must follow the --metric"),
        (
            ["--run", "GOOD", "--baseline", "BAD", "--metric", "a", "--max-drop", "x"],
            "is not a number",
        ),
        (
            ["--run", "GOOD", "--baseline", "BAD", "--metric", "a", "--max-drop", "-1"],
            "is negative",
        ),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    built: Built, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    argv = [{"GOOD": built.good, "BAD": built.bad}.get(a, a) for a in argv]
    rc, out, err = _gate(capsys, built, *argv)
    assert rc == 2, out + err
    assert said in err, err


def test_the_real_command_exits_1_on_a_regression(built: Built, workdir: Path) -> None:
    proc = run_cli(
        "--run", built.bad, "--baseline", "champion:iris-clf", "--metric", "val_accuracy",
        "--max-drop", "0.01", "--tracking-uri", built.uri,
        module="runner.gate", check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION" in proc.stdout
    ok = run_cli(
        "--run", built.good, "--baseline", "champion:iris-clf", "--metric", "val_accuracy",
        "--tracking-uri", built.uri, module="runner.gate", check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert run_cli("--help", module="runner.gate").stdout.count("--max-drop") >= 1
