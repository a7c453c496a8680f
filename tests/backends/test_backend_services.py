"""The backends against real services: MLflow servers, PostgreSQL, S3 (moto), Chromium.

Server starts dominate the cost (about 15 s each here), so the servers are session fixtures
shared by these tests, each test in its own experiment.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.backends.conftest import ADMIN_PASSWORD
from tests.conftest import ROOT, run_cli
from tests.services import Service, free_port

#: Keep the jobs cheap: no figures or importances (artifacts are still logged: configs).
CHEAP = ("tracking.log_figures=false", "tracking.log_importances=false")


def _runs(client, experiment: str):  # type: ignore[no-untyped-def]
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return exp, client.search_runs([exp.experiment_id], max_results=100)


def test_server_down_fails_within_seconds_naming_the_uri(workdir: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = run_cli("backend=server", f"backend.uri={uri}", *CHEAP, check=False)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert f"tracking server at {uri} does not answer" in output
    assert "Traceback" not in output
    # Interpreter and imports take most of this; the check itself is < 5 s (unit test).
    assert elapsed < 45
    assert not (workdir / ".runner_buffer").exists()


def test_buffered_runs_sync_onto_the_server_once(workdir: Path, sqlite_server: Service) -> None:
    from mlflow.tracking import MlflowClient

    from runner import sync

    down = f"http://127.0.0.1:{free_port()}"
    run_cli(
        "-m", "backend=server", f"backend.uri={down}", "tracking.on_unavailable=buffer",
        "experiment_name=buffered", "model=xgb", "model.n_estimators=4", "seed=0,1", *CHEAP,
    )  # fmt: skip
    buffer = MlflowClient(f"sqlite:///{workdir / '.runner_buffer' / 'mlflow.db'}")
    _, buffered = _runs(buffer, "buffered")
    assert len(buffered) == 3
    assert {r.info.status for r in buffered} == {"FINISHED"}
    assert {r.data.tags["runner.buffered_for"] for r in buffered} == {down}
    assert {r.data.tags["runner.tracking_uri"] for r in buffered} == {down}

    assert sync.main(["--to", sqlite_server.url]) == 0
    server = MlflowClient(sqlite_server.url)
    _, copies = _runs(server, "buffered")
    assert len(copies) == 3
    by_source = {r.data.tags["runner.synced_from"]: r for r in copies}
    assert set(by_source) == {r.info.run_id for r in buffered}
    copy_of = {old: new.info.run_id for old, new in by_source.items()}
    for run in buffered:
        copy = by_source[run.info.run_id]
        assert copy.info.status == "FINISHED"
        assert (copy.info.start_time, copy.info.end_time) == (
            run.info.start_time, run.info.end_time)  # fmt: skip
        assert copy.data.params == run.data.params
        assert copy.info.run_name == run.info.run_name
        for key, value in run.data.tags.items():
            if key == "mlflow.parentRunId":
                assert copy.data.tags[key] == copy_of[value]
            elif key not in ("runner.buffered_for", "runner.synced_to"):
                assert copy.data.tags[key] == value, key
        assert "runner.buffered_for" not in copy.data.tags
        for key in run.data.metrics:

            def hist(c, rid, k=key):  # type: ignore[no-untyped-def]
                return [(m.step, m.timestamp, m.value) for m in c.get_metric_history(rid, k)]

            assert hist(server, copy.info.run_id) == hist(buffer, run.info.run_id), key
        if run.data.tags["runner.kind"] == "job":
            assert len(server.get_metric_history(copy.info.run_id, "boost_val_mlogloss")) == 4
            arts = {a.path for a in server.list_artifacts(copy.info.run_id)}
            assert {"config.yaml", ".hydra"} <= arts
            models = server.search_logged_models(
                experiment_ids=[copy.info.experiment_id],
                filter_string=f"source_run_id = '{copy.info.run_id}'",
            )
            assert [m.name for m in models] == ["model"]
    # Idempotent: a second sync copies nothing.
    assert sync.main(["--to", sqlite_server.url]) == 0
    assert len(_runs(server, "buffered")[1]) == 3
    assert all("runner.synced_to" in r.data.tags for r in _runs(buffer, "buffered")[1])


def test_joblib_workers_share_a_fresh_sqlite_store(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    db = workdir / "fresh" / "mlflow.db"
    db.parent.mkdir()
    run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=0,1,2,3",
        f"backend.uri=sqlite:///{db}", "tracking.log_model=false", *CHEAP,
    )  # fmt: skip
    _, runs = _runs(MlflowClient(f"sqlite:///{db}"), "iris")
    parents = [r for r in runs if r.data.tags["runner.kind"] == "sweep"]
    jobs = [r for r in runs if r.data.tags["runner.kind"] == "job"]
    assert len(parents) == 1 and len(jobs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}
    assert {r.data.tags["runner.job_num"] for r in jobs} == {"0", "1", "2", "3"}
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_sweep_through_server_nested_in_the_ui(workdir: Path, sqlite_server: Service) -> None:
    from mlflow.tracking import MlflowClient

    run_cli(
        "-m", "backend=server", f"backend.uri={sqlite_server.url}", "experiment_name=ui_sweep",
        "seed=0,1", "tracking.log_model=false", *CHEAP,
    )  # fmt: skip
    client = MlflowClient(sqlite_server.url)
    exp, runs = _runs(client, "ui_sweep")
    (parent,) = [r for r in runs if r.data.tags["runner.kind"] == "sweep"]
    jobs = [r for r in runs if r.data.tags["runner.kind"] == "job"]
    assert len(jobs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
    assert {r.data.tags["runner.backend"] for r in runs} == {"server"}
    # Artifacts go through the server into its --artifacts-destination.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    assert "config.yaml" in {a.path for a in client.list_artifacts(jobs[0].info.run_id)}
    home = Path(sqlite_server.env["RUNNER_SERVER_HOME"])
    stored = list((home / "mlartifacts").rglob("config.yaml"))
    assert any(jobs[0].info.run_id in str(p) for p in stored), stored

    _screenshot_nested_runs(sqlite_server.url, exp.experiment_id, parent, jobs)


def _screenshot_nested_runs(url: str, experiment_id: str, parent, jobs) -> None:  # type: ignore[no-untyped-def]
    import os

    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # pragma: no cover - a dev dependency
        if os.environ.get("CI"):
            pytest.fail(f"playwright is needed (CI is set): {e}")
        pytest.skip(f"playwright missing: {e}")
    if not Path("/usr/bin/chromium").exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is needed (CI is set): apt-get install -y chromium")
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/#/experiments/{experiment_id}/runs")
            page.get_by_text(parent.info.run_name, exact=False).first.wait_for(timeout=60_000)
            # Children are folded under their parent: its expander unfolds them.
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
            for job in jobs:
                page.get_by_text(job.info.run_name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(out / "ui_sweep_nested.png"), full_page=True)
        finally:
            browser.close()
    assert (out / "ui_sweep_nested.png").stat().st_size > 10_000


def test_auth_server_on_postgres_and_s3(
    workdir: Path, auth_server: Service, postgres: Service, s3: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import boto3
    import psycopg
    import requests
    from mlflow.tracking import MlflowClient

    search = f"{auth_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=60).status_code == 401
    assert requests.get(search, auth=("admin", "wrong"), timeout=60).status_code == 401
    assert requests.get(search, auth=("admin", ADMIN_PASSWORD), timeout=60).status_code == 200

    creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    run_cli(
        "backend=server", f"backend.uri={auth_server.url}", "experiment_name=team",
        "tracking.log_model=false", *CHEAP, env=creds,
    )  # fmt: skip
    for var, value in creds.items():
        monkeypatch.setenv(var, value)
    client = MlflowClient(auth_server.url)
    _, (run,) = _runs(client, "team")
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "logreg"
    assert ADMIN_PASSWORD not in json.dumps(run.data.tags) + json.dumps(run.data.params)

    # Artifacts: listed and downloaded through the server, stored in S3.
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    local = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir)))
    assert "experiment_name: team" in local.read_text()
    client.log_text(run.info.run_id, "uploaded through the server", "notes/upload.txt")
    s3_client = boto3.client(
        "s3", endpoint_url=s3.url, aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
    )  # fmt: skip
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mlflow")["Contents"]]
    mine = [k for k in keys if run.info.run_id in k]
    assert any(k.endswith("config.yaml") for k in mine), keys
    assert any(k.endswith("notes/upload.txt") for k in mine), keys
    assert all(k.startswith("artifacts/") for k in mine)

    # The run lives in PostgreSQL.
    conninfo = postgres.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)
        ).fetchone()
    assert row == ("FINISHED",)


_RACE = """
import sys
from runner.tracking.store import Store, ensure_store
ensure_store(sys.argv[1])
store = Store(sys.argv[1], artifact_root=sys.argv[2])
store.create_run(store.experiment_id("race"), name=sys.argv[3], tags={})
"""


def test_processes_share_a_fresh_postgres_store(workdir: Path, postgres: Service) -> None:
    import subprocess
    import sys

    import psycopg
    from mlflow.tracking import MlflowClient

    conninfo = postgres.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE DATABASE race")
    uri = postgres.url.rsplit("/", 1)[0] + "/race"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, uri, str(workdir / "artifacts"), f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    _, runs = _runs(MlflowClient(uri), "race")
    assert sorted(r.info.run_name for r in runs) == ["p0", "p1", "p2", "p3"]
