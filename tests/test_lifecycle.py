"""``python -m runner.lifecycle`` on a store built by the real runner plus runs at set ages.

One store is built per module: a real grid sweep through the CLI (two FINISHED jobs, two
FAILED ones on a missing CSV, their FAILED sweep parent), aged ten days through MLflow's
SQLAlchemy store, plus client-made runs at controlled ages (killed, stale RUNNING, deleted,
sweep trees) and experiments idle for months. Each test works on its own copy and asserts
exactly which runs and experiments changed state, and that nothing else did.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.lifecycle import main
from runner.lifecycle.durations import DurationError, parse_duration
from tests.conftest import ROOT, run_cli
from tests.services import free_port

DAY = 86_400_000
HOUR = 3_600_000
MINUTE = 60_000
POLICY = str(ROOT / "runner" / "resources" / "lifecycle" / "default.yaml")


def _now() -> int:
    return int(time.time() * 1000)


# -- building the store -----------------------------------------------------------------------
@functools.cache
def _sql_store(uri: str) -> Any:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(uri, "unused-artifact-root")


def _session(uri: str) -> Any:
    return _sql_store(uri).ManagedSessionMaker(read_only=False)


def _shift_runs(uri: str, run_ids: list[str], delta_ms: int) -> None:
    """Move runs ``delta_ms`` into the past: start, end and every metric timestamp."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun

    with _session(uri) as s:
        for model in (SqlRun,):
            for row in s.query(model).filter(model.run_uuid.in_(run_ids)):
                row.start_time -= delta_ms
                if row.end_time:
                    row.end_time -= delta_ms
        for model in (SqlMetric, SqlLatestMetric):  # type: ignore[assignment]
            for row in s.query(model).filter(model.run_uuid.in_(run_ids)):
                row.timestamp -= delta_ms


def _set_experiment_time(uri: str, experiment_id: str, ms: int) -> None:
    from mlflow.store.tracking.dbmodels.models import SqlExperiment

    with _session(uri) as s:
        row = s.query(SqlExperiment).filter(SqlExperiment.experiment_id == int(experiment_id))
        row.update({"creation_time": ms, "last_update_time": ms})


def _set_deleted_time(uri: str, run_id: str, ms: int) -> None:
    from mlflow.store.tracking.dbmodels.models import SqlRun

    with _session(uri) as s:
        s.query(SqlRun).filter(SqlRun.run_uuid == run_id).update({"deleted_time": ms})


@dataclass
class Built:
    dir: Path
    runs: dict[str, str]  # name in these tests -> run id
    exps: dict[str, str]  # experiment name -> id


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> Built:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("lifecycle-src")
    shutil.copy(_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rows = [f"{(i * 37 % 100) / 100},{(i * 53 % 100) / 100},{i % 2}" for i in range(60)]
    (root / "good.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    proc = run_cli(
        "-m",
        "dataset=csv",
        "dataset.target=label",
        "dataset.path=good.csv,missing.csv",
        "seed=0,1",
        "tracking.log_model=false",
        "tracking.log_figures=false",
        cwd=root,
        env={"MLFLOW_TRACKING_URI": uri},
        check=False,
    )
    assert proc.returncode != 0, "the sweep with a missing CSV must fail"
    client = MlflowClient(uri)
    csv_exp = client.get_experiment_by_name("csv").experiment_id
    runs: dict[str, str] = {}
    for r in client.search_runs([csv_exp]):
        if r.data.tags.get("runner.kind") == "sweep":
            runs["P"] = r.info.run_id
        else:
            prefix = "F" if r.info.status == "FINISHED" else "X"
            runs[f"{prefix}{r.data.params['seed']}"] = r.info.run_id
    assert sorted(runs) == ["F0", "F1", "P", "X0", "X1"], runs
    assert client.get_run(runs["P"]).info.status == "FAILED"
    now = _now()
    _shift_runs(uri, list(runs.values()), 10 * DAY)
    _set_experiment_time(uri, csv_exp, now - 10 * DAY)
    exps = {"csv": csv_exp}

    def exp(name: str, created: int) -> str:
        loc = (root / "mlartifacts" / name).as_uri()
        exps[name] = client.create_experiment(name, artifact_location=loc)
        _set_experiment_time(uri, exps[name], created)
        return exps[name]

    def mk(
        key: str,
        experiment: str,
        start: int,
        status: str | None,
        *,
        end: int | None = None,
        metric_at: int | None = None,
        parent: str | None = None,
        sweep: bool = False,
        artifact_bytes: int = 0,
    ) -> None:
        tags = {"runner.kind": "sweep" if sweep else "job"}
        if parent:
            tags["mlflow.parentRunId"] = runs[parent]
        r = client.create_run(exps[experiment], start_time=start, run_name=key, tags=tags)
        runs[key] = r.info.run_id
        if metric_at:
            client.log_metric(r.info.run_id, "val_loss", 0.5, timestamp=metric_at)
        if artifact_bytes:
            client.log_text(r.info.run_id, "x" * artifact_bytes, "blob.txt")
        if status:
            client.set_terminated(r.info.run_id, status, end_time=end or start + MINUTE)

    exp("synth", now - 60 * DAY)
    mk("SP", "synth", now - 10 * DAY, "FAILED", sweep=True)
    mk("SC1", "synth", now - 10 * DAY, "FAILED", parent="SP")
    mk("SC2", "synth", now - 10 * DAY, "KILLED", parent="SP")
    mk("K1", "synth", now - 10 * DAY, "KILLED")
    mk("FR", "synth", now - 1 * DAY, "FAILED")
    mk("FIN", "synth", now - 10 * DAY, "FINISHED")
    mk("D1", "synth", now - 50 * DAY, "FAILED", artifact_bytes=2000)
    client.delete_run(runs["D1"])
    _set_deleted_time(uri, runs["D1"], now - 40 * DAY)
    mk("D2", "synth", now - 10 * DAY, "FINISHED", artifact_bytes=500)
    client.delete_run(runs["D2"])
    _set_deleted_time(uri, runs["D2"], now - 5 * DAY)

    exp("live", now - 2 * DAY)
    mk("R1", "live", now - 3 * HOUR, None)
    mk("R2", "live", now - 5 * HOUR, None, metric_at=now - 10 * MINUTE)
    mk("RP", "live", now - 5 * HOUR, None, sweep=True)
    mk("RC", "live", now - 4 * HOUR, "FINISHED", end=now - 30 * MINUTE, parent="RP")
    mk("RP2", "live", now - 5 * HOUR, None, sweep=True)
    mk("RC2", "live", now - 4 * HOUR, None, metric_at=now - 3 * HOUR, parent="RP2")
    mk("RF", "live", now - 5 * HOUR, "FINISHED")

    exp("old", now - 200 * DAY)
    mk("O1", "old", now - 150 * DAY, "FINISHED", metric_at=now - 150 * DAY)
    exp("old_best", now - 200 * DAY)
    mk("OB", "old_best", now - 150 * DAY, "FINISHED")
    client.set_tag(runs["OB"], "runner.best", "true")
    exp("old_running", now - 200 * DAY)
    mk("OR", "old_running", now - 150 * DAY, None, metric_at=now - DAY)
    exp("fresh_empty", now)
    exp("gone", now - 200 * DAY)
    mk("G1", "gone", now - 150 * DAY, "FINISHED", artifact_bytes=300)
    client.delete_experiment(exps["gone"])
    _set_experiment_time(uri, exps["gone"], now - 40 * DAY)
    _set_deleted_time(uri, runs["G1"], now - 40 * DAY)  # deleted with its experiment
    # Deleted 40 days ago, but one of its runs only yesterday: gc must wait for it.
    exp("gone_late", now - 200 * DAY)
    mk("GL", "gone_late", now - 150 * DAY, "FINISHED", artifact_bytes=100)
    client.delete_experiment(exps["gone_late"])
    _set_experiment_time(uri, exps["gone_late"], now - 40 * DAY)
    _set_deleted_time(uri, runs["GL"], now - 1 * DAY)
    return Built(root, runs, exps)


@dataclass
class Store:
    dir: Path
    uri: str
    runs: dict[str, str]
    exps: dict[str, str]
    client: Any

    def name(self, run_id: str) -> str:
        return {v: k for k, v in self.runs.items()}[run_id]


@pytest.fixture
def store(built: Built, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """This test's own copy of the built store (artifact locations moved along)."""
    from mlflow.tracking import MlflowClient

    dst = workdir / "store"
    shutil.copytree(built.dir, dst)
    old, new = built.dir.as_uri() + "/", dst.as_uri() + "/"
    con = sqlite3.connect(dst / "mlflow.db")
    with con:
        con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        con.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
            (old, new),
        )
    con.close()
    uri = f"sqlite:///{dst / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return Store(dst, uri, dict(built.runs), dict(built.exps), MlflowClient(uri))


# -- observing the store ----------------------------------------------------------------------
def snapshot(client: Any) -> dict[str, Any]:
    """Every run's and experiment's state, deleted ones included."""
    from mlflow.entities import ViewType

    exps = client.search_experiments(view_type=ViewType.ALL)
    state: dict[str, Any] = {f"exp:{e.name}": e.lifecycle_stage for e in exps}
    for r in client.search_runs(
        [e.experiment_id for e in exps], run_view_type=ViewType.ALL, max_results=1000
    ):
        state[r.info.run_id] = (
            r.info.status,
            r.info.lifecycle_stage,
            r.data.tags.get("runner.best"),
            "runner.closed_reason" in r.data.tags,
        )
    return state


def changes(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def named(store: Store, keys: set[str]) -> set[str]:
    return {k if k.startswith("exp:") else store.name(k) for k in keys}


def lifecycle(*argv: str, stdin: str = "") -> int:
    """``main(argv)`` in-process, with ``stdin`` as the answer to its question."""
    saved, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        return main(list(argv))
    finally:
        sys.stdin = saved


# -- tests ------------------------------------------------------------------------------------
def test_durations() -> None:
    assert parse_duration("90d").total_seconds() == 90 * 86400
    assert parse_duration("2h").total_seconds() == 7200
    assert parse_duration("30m").total_seconds() == 1800
    assert parse_duration("1w").total_seconds() == 7 * 86400
    assert parse_duration("1d12h").total_seconds() == 36 * 3600
    for bad in ("90x", "", "d", "7", "-1d", "1d x"):
        with pytest.raises(DurationError, match="not a duration"):
            parse_duration(bad)


def test_prune_failed(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    s0 = snapshot(store.client)
    assert lifecycle("prune-failed", "--older-than", "7d", "--include-killed", "--dry-run") == 0
    out = capsys.readouterr().out
    assert snapshot(store.client) == s0
    for key in ("X0", "X1", "SC1", "SC2", "K1", "SP"):
        assert store.runs[key] in out
    assert f"kept parent run {store.runs['P']}" in out

    assert lifecycle("prune-failed", "--experiment", "csv", "--older-than", "7d", "--yes") == 0
    s1 = snapshot(store.client)
    assert named(store, changes(s0, s1)) == {"X0", "X1"}
    assert all(s1[store.runs[k]][1] == "deleted" for k in ("X0", "X1"))

    # Without --include-killed the sweep parent SP keeps its KILLED child, so SP stays.
    assert lifecycle("prune-failed", "--older-than", "7d", "--yes") == 0
    s2 = snapshot(store.client)
    assert named(store, changes(s1, s2)) == {"SC1"}

    assert lifecycle("prune-failed", "--older-than", "7d", "--include-killed", "--yes") == 0
    s3 = snapshot(store.client)
    assert named(store, changes(s2, s3)) == {"SC2", "K1", "SP"}
    capsys.readouterr()

    # Idempotent; the csv sweep parent P is never pruned while its FINISHED runs live.
    assert lifecycle("prune-failed", "--older-than", "7d", "--include-killed", "--yes") == 0
    assert snapshot(store.client) == s3
    assert "nothing to do" in capsys.readouterr().out
    assert s3[store.runs["P"]][1] == "active"
    # Soft-deleted: MLflow's restore brings a run back.
    store.client.restore_run(store.runs["K1"])
    assert store.client.get_run(store.runs["K1"]).info.lifecycle_stage == "active"


def test_confirmation(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    s0 = snapshot(store.client)
    assert lifecycle("prune-failed", "--older-than", "7d", stdin="n\n") == 1
    assert lifecycle("prune-failed", "--older-than", "7d", stdin="") == 1
    assert snapshot(store.client) == s0
    assert "not confirmed, nothing changed" in capsys.readouterr().err
    assert lifecycle("prune-failed", "--older-than", "7d", stdin="y\n") == 0
    assert named(store, changes(s0, snapshot(store.client))) == {"X0", "X1", "SC1"}


def test_close_stale(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    s0 = snapshot(store.client)
    assert lifecycle("close-stale", "--older-than", "2h", "--dry-run") == 0
    assert snapshot(store.client) == s0
    out = capsys.readouterr().out
    assert "4 changes" in out and store.runs["R1"] in out

    assert lifecycle("close-stale", "--older-than", "2h", "--yes") == 0
    s1 = snapshot(store.client)
    # R2 logged a metric 10 minutes ago; RP's child ended 30 minutes ago.
    assert named(store, changes(s0, s1)) == {"R1", "RP2", "RC2", "OR"}
    for key in ("R1", "RP2", "RC2", "OR"):
        run = store.client.get_run(store.runs[key])
        assert run.info.status == "KILLED"
        assert "no activity" in run.data.tags["runner.closed_reason"]
        assert run.info.end_time < _now() - 2 * HOUR  # ended at its last activity
    assert "child runs" in store.client.get_run(store.runs["RP2"]).data.tags["runner.closed_reason"]
    assert lifecycle("close-stale", "--older-than", "2h", "--yes") == 0
    assert snapshot(store.client) == s1

    # A shorter cutoff reaches R2 and RP (through its child); FAILED on request.
    assert lifecycle("close-stale", "--older-than", "5m", "--status", "FAILED", "--yes") == 0
    s2 = snapshot(store.client)
    assert named(store, changes(s1, s2)) == {"R2", "RP"}
    assert s2[store.runs["R2"]][0] == "FAILED"


def test_archive(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    s0 = snapshot(store.client)
    export = store.dir / "exports"
    argv = ["archive", "--older-than", "90d", "--keep-tagged", "best", "--export-csv", str(export)]
    assert lifecycle(*argv, "--dry-run") == 0
    assert snapshot(store.client) == s0
    assert not export.exists()
    out = capsys.readouterr().out
    assert f"experiment {store.exps['old']} (old)" in out
    assert "kept experiment" in out and "old_best" in out

    assert lifecycle(*argv, "--yes") == 0
    s1 = snapshot(store.client)
    # The experiment goes, and its run with it (MLflow marks them deleted together).
    assert named(store, changes(s0, s1)) == {"exp:old", "O1"}
    csv_text = (export / f"{store.exps['old']}-old.csv").read_text()
    assert store.runs["O1"] in csv_text and "metrics.val_loss" in csv_text.splitlines()[0]

    assert lifecycle("archive", "--older-than", "90d", "--yes") == 0
    s2 = snapshot(store.client)
    assert named(store, changes(s1, s2)) == {"exp:old_best", "OB"}
    assert lifecycle("archive", "--older-than", "90d", "--yes") == 0
    assert snapshot(store.client) == s2  # idempotent; old_running and fresh_empty stay
    store.client.restore_experiment(store.exps["old"])
    assert snapshot(store.client)["exp:old"] == "active"


def test_tag_best(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    c = store.client
    # val_log_loss, not val_accuracy: 15 validation rows make accuracy ties likely.
    loss = {k: c.get_run(store.runs[k]).data.metrics["val_log_loss"] for k in ("F0", "F1")}
    assert loss["F0"] != loss["F1"]
    best, other = sorted(loss, key=loss.__getitem__)
    c.set_tag(store.runs["X0"], "runner.best", "true")  # a stale tag on a FAILED run
    s0 = snapshot(c)
    argv = ["tag-best", "--experiment", "csv", "--metric", "val_log_loss"]
    assert lifecycle(*argv, "--top", "1", "--direction", "minimize", "--dry-run") == 0
    assert snapshot(c) == s0
    assert lifecycle(*argv, "--top", "1", "--direction", "minimize") == 0  # no question asked
    s1 = snapshot(c)
    assert named(store, changes(s0, s1)) == {best, "X0"}
    assert s1[store.runs[best]][2] == "true" and s1[store.runs["X0"]][2] is None

    # Direction from the runs' `direction` param (maximize, the default objective's).
    assert lifecycle(*argv, "--top", "3", "--sweep", store.runs["P"]) == 0
    s2 = snapshot(c)
    assert named(store, changes(s1, s2)) == {other}
    # maximize flips the winner: the old best loses the tag.
    assert lifecycle(*argv, "--top", "1", "--direction", "maximize") == 0
    s3 = snapshot(c)
    assert named(store, changes(s2, s3)) == {best}
    assert lifecycle(*argv, "--top", "1", "--direction", "maximize") == 0
    assert snapshot(c) == s3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["archive", "--older-than", "90x"], "'90x' is not a duration"),
        (["prune-failed", "--older-than", "7d", "--experiment", "nope"], "'nope' does not exist"),
        (["tag-best", "--experiment", "csv", "--metric", "val_nope"], "no selected run has"),
        (["tag-best", "--experiment", "nope", "--metric", "val_accuracy"], "does not exist"),
        (
            ["tag-best", "--experiment", "csv", "--metric", "val_accuracy", "--sweep", "abc"],
            "--sweep 'abc' is not a run",
        ),
        (["gc", "--tracking-uri", "http://127.0.0.1:9"], "--backend-store-uri"),
        (["gc", "--older-than", "30x"], "not a duration"),
        (["archive", "--older-than", "1d", "--export-csv", "/proc/nope/x"], "cannot write"),
        (["policy", "nope.yaml"], "policy file 'nope.yaml' does not exist"),
    ],
)
def test_bad_input_changes_nothing(
    store: Store, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    s0 = snapshot(store.client)
    files0 = sorted(p.relative_to(store.dir) for p in store.dir.rglob("*"))
    assert lifecycle(*argv, "--yes") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert snapshot(store.client) == s0
    assert sorted(p.relative_to(store.dir) for p in store.dir.rglob("*")) == files0


def test_gc(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    blob = {
        k: Path(store.client.get_run(store.runs[k]).info.artifact_uri[len("file://") :])
        for k in ("D1", "D2", "G1")
    }
    assert all((b / "blob.txt").is_file() for b in blob.values())
    s0 = snapshot(store.client)
    assert lifecycle("gc", "--dry-run") == 0  # default: --older-than 30d
    assert snapshot(store.client) == s0
    out = capsys.readouterr().out
    assert store.runs["D1"] in out and store.runs["G1"] in out and store.runs["D2"] not in out
    assert "experiment" in out and "(gone)" in out
    assert "(gone_late) waits" in out and store.runs["GL"] not in out

    assert lifecycle("gc", "--older-than", "30d", "--yes") == 0
    out = capsys.readouterr().out
    s1 = snapshot(store.client)
    assert named(store, changes(s0, s1)) == {"D1", "G1", "exp:gone"}
    assert store.runs["D1"] not in s1 and "exp:gone" not in s1
    assert not (blob["D1"] / "blob.txt").exists() and not (blob["G1"] / "blob.txt").exists()
    assert (blob["D2"] / "blob.txt").is_file()
    assert "(2300 bytes;" in out  # 2000 + 300 bytes of artifacts
    assert f"Run with ID {store.runs['D1']} has been permanently deleted" in out

    assert lifecycle("gc", "--older-than", "30d", "--yes") == 0
    assert snapshot(store.client) == s1
    assert lifecycle("gc", "--older-than", "12h", "--yes") == 0
    assert named(store, changes(s1, snapshot(store.client))) == {"D2", "GL", "exp:gone_late"}


def test_policy(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    s0 = snapshot(store.client)
    assert lifecycle("policy", POLICY, "--dry-run") == 0
    assert snapshot(store.client) == s0
    # An error in the last step stops the routine before the first step acts.
    assert lifecycle("policy", POLICY, "--yes", "steps.3.gc.older_than=30x") == 2
    assert "not a duration" in capsys.readouterr().err
    assert snapshot(store.client) == s0

    assert lifecycle("policy", "default", "--yes") == 0  # a bare name finds the shipped file
    s1 = snapshot(store.client)
    closed = {"R1", "RP2", "RC2", "OR"}
    pruned = {"X0", "X1", "SC1", "SC2", "K1", "SP"}
    archived = {"exp:old", "O1"}
    collected = {"D1", "G1", "exp:gone"}
    assert named(store, changes(s0, s1)) == closed | pruned | archived | collected
    assert lifecycle("policy", POLICY, "--yes") == 0
    assert snapshot(store.client) == s1


def test_cli_subprocess(store: Store) -> None:
    proc = run_cli("archive", "--older-than", "90x", module="runner.lifecycle", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --older-than '90x' is not a duration")
    assert "Traceback" not in proc.stderr
    assert main(["--help"]) == 0


# -- the same through a tracking server -------------------------------------------------------
@pytest.fixture
def server(store: Store) -> Iterator[str]:
    """``mlflow server`` over the test's store copy."""
    import requests

    port = free_port()
    log = (store.dir / "server.log").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--workers", "1"),
            *("--backend-store-uri", store.uri, "--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=store.dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        start_new_session=True,  # its own process group: uvicorn's worker stops with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            msg = f"mlflow server did not start: {(store.dir / 'server.log').read_text()[-2000:]}"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_policy_through_server(
    store: Store, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s0 = snapshot(store.client)
    # gc needs the database behind the server.
    assert lifecycle("gc", "--tracking-uri", server, "--yes") == 2
    assert "--backend-store-uri" in capsys.readouterr().err
    assert snapshot(store.client) == s0

    argv = ["policy", POLICY, "--tracking-uri", server, "--yes"]
    assert lifecycle(*argv, f"backend_store_uri={store.uri}") == 0
    s1 = snapshot(store.client)
    assert named(store, changes(s0, s1)) == {
        *("R1", "RP2", "RC2", "OR"),
        *("X0", "X1", "SC1", "SC2", "K1", "SP"),
        *("exp:old", "O1"),
        *("D1", "G1", "exp:gone"),
    }
    assert (
        lifecycle(
            "tag-best",
            "--tracking-uri",
            server,
            "--experiment",
            "csv",
            "--metric",
            "val_accuracy",
            "--top",
            "2",
        )
        == 0
    )
    s2 = snapshot(store.client)
    assert named(store, changes(s1, s2)) == {"F0", "F1"}
