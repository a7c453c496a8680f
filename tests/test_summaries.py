"""What a user sees at the end of a run or a sweep, run names, and the long commands' progress.

The real CLI in subprocesses on a real SQLite store (one test on a real tracking server for
the URL form); the summary's parent run id is parsed from the output and checked against the
store.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runner import contract
from tests.backends.conftest import sqlite_server  # noqa: F401 - the server test's fixture
from tests.conftest import run_cli
from tests.helpers import runs_of
from tests.services import Service

CHEAP = ("tracking.log_figures=false", "tracking.log_importances=false")
ERROR_LINE = "Error executing job with overrides"
PARENT = re.compile(r"parent run ([0-9a-f]{32}) \(experiment (\d+)\)")


def _parent_from(out: str) -> tuple[str, str]:
    found = PARENT.findall(out)
    assert len(found) == 1, out
    return found[0]


def _children(client, parent_id: str) -> list:  # type: ignore[no-untyped-def]
    exp = client.get_run(parent_id).info.experiment_id
    flt = f"tags.`{contract.PARENT_RUN_ID}` = '{parent_id}'"
    return client.search_runs([exp], filter_string=flt, max_results=1000)


def _check_local_links(out: str, uri: str, parent: str, exp: str) -> None:
    assert f"mlflow ui --backend-store-uri {uri}" in out, out
    assert f"then open http://127.0.0.1:5000/#/experiments/{exp}/runs/{parent}" in out, out
    # The default store of the commands (mlflow.db here): no --tracking-uri needed.
    assert f"next: python -m runner.compare --sweep {parent}\n" in out, out


# -- sweeps ---------------------------------------------------------------------------------
def test_grid_sweep_prints_its_summary_and_names_its_runs(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("-m", "lr=0.01,0.1", "seed=0", f"backend.uri={tracking_uri}", *CHEAP)
    out = proc.stdout + proc.stderr
    parent, exp = _parent_from(out)
    run = client.get_run(parent)
    assert run.data.tags[contract.KIND] == "sweep"
    assert run.info.run_name == "logreg-iris sweep over lr"
    kids = _children(client, parent)
    assert sorted(k.info.run_name for k in kids) == ["logreg-iris lr=0.01", "logreg-iris lr=0.1"]
    assert all("backend" not in r.info.run_name for r in [run, *kids])
    assert "logreg-iris sweep over lr: done in " in out, out
    assert "s, 2 jobs (2 completed)" in out, out
    best = max(kids, key=lambda k: k.data.metrics["val_accuracy"])
    shown = re.search(r"best val_accuracy ([0-9.]+) \(job #(\d)\): (lr=\S+)", out)
    assert shown is not None, out
    assert float(shown.group(1)) == pytest.approx(best.data.metrics["val_accuracy"], abs=1e-6)
    assert run.info.experiment_id == exp
    _check_local_links(out, tracking_uri, parent, exp)
    # The command it suggests runs, and lists this sweep's runs.
    compare = run_cli("--sweep", parent, module="runner.compare")
    assert all(k.info.run_id[:8] in compare.stdout for k in kids), compare.stdout


def test_optuna_sweep_prints_its_summary(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        "lr=interval(0.01, 1.0)",
        f"backend.uri={tracking_uri}",
        *CHEAP,
    )
    out = proc.stdout + proc.stderr
    parent, exp = _parent_from(out)
    run = client.get_run(parent)
    assert run.data.tags[contract.KIND] == "sweep"
    assert run.data.tags[contract.SWEEPER] == "optuna"
    study = run.data.params["study_name"]
    assert run.info.run_name == study
    assert f"study {study}: done in " in out and "s, 2 trials (2 complete)" in out, out
    assert re.search(r"best val_accuracy [0-9.]+ \(trial [01]\): lr=[0-9.]+", out), out
    kids = _children(client, parent)
    assert len(kids) == 2
    for kid in kids:
        # The swept value, short: four significant digits of the trial's lr.
        lr = float(kid.data.params["lr"])
        assert kid.info.run_name == f"logreg-iris lr={lr:.4g}", kid.info.run_name
        assert "backend" not in kid.info.run_name
    _check_local_links(out, tracking_uri, parent, exp)
    assert "optimization_results.yaml" in out


def test_progress_none_quiets_the_summaries(workdir: Path, _template_db: Path) -> None:
    # Three independent commands, at once: each in a launch directory and a store of its
    # own (nothing shared to race on), so the second core is not left idle.
    commands = {
        "grid": ("-m", "lr=0.01,0.1"),
        "single": (),
        "optuna": (
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=1",
            "lr=interval(0.01, 1.0)",
        ),
    }

    def run(name: str) -> str:
        home = workdir / name
        home.mkdir()
        env = {"MLFLOW_TRACKING_URI": _store(home, _template_db)}
        proc = run_cli(*commands[name], "hydra.sweeper.progress=none", *CHEAP, cwd=home, env=env)
        return proc.stdout + proc.stderr

    with ThreadPoolExecutor(len(commands)) as pool:
        outs = dict(zip(commands, pool.map(run, commands), strict=True))
    for name in ("grid", "single"):
        out = outs[name]
        assert "parent run" not in out and "run id" not in out and ": done in " not in out, out
    assert "parent run" not in outs["optuna"]


def test_bad_progress_value_is_a_clear_error(workdir: Path) -> None:
    proc = run_cli("-m", "lr=0.1,0.2", "hydra.sweeper.progress=quiet", "backend=none", check=False)
    assert proc.returncode == 1
    assert "hydra.sweeper.progress is 'quiet'; it must be one of auto, rich, log, none" in (
        proc.stdout + proc.stderr
    )


# -- a newcomer's first run -----------------------------------------------------------------
def test_first_run_is_quiet_but_for_ours(workdir: Path) -> None:
    """No store yet, no MLFLOW_TRACKING_URI: MLflow's noise is gone, our lines say it."""
    proc = run_cli()  # `python -m runner`, as the README's first command
    out = proc.stdout + proc.stderr
    for noise in (
        "can execute arbitrary code",
        "Creating initial MLflow database tables",
        "Updating database tables",
        "alembic",
        "Context impl",
    ):
        assert noise not in out, out
    db = workdir / "mlflow.db"
    assert f"created the MLflow store sqlite:///{db}" in out, out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    (run,) = runs_of(client, "iris")
    assert run.info.run_name == "logreg-iris"
    assert "run logreg-iris finished in " in out, out
    assert f"  run id {run.info.run_id}\n" in out, out
    exp = run.info.experiment_id
    assert f"#/experiments/{exp}/runs/{run.info.run_id}" in out, out
    # The model was logged all the same (the warning came from logging it).
    assert run.outputs is not None and run.outputs.model_outputs, run


def test_single_run_name_has_its_overrides_and_no_backend(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    run_cli("model=xgb", "lr=0.05", "seed=3", f"backend.uri={tracking_uri}", *CHEAP)
    (run,) = runs_of(client, "iris")
    assert run.info.run_name == "xgb-iris lr=0.05 seed=3"


def test_failing_job_error_line_is_printed_once(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    single = run_cli("model.C=-1", *CHEAP, check=False)
    out = single.stdout + single.stderr
    assert single.returncode == 1
    assert out.count(ERROR_LINE) == 1, out
    assert "run logreg-iris model.C=-1 failed" in out, out
    grid = run_cli("-m", "model.C=-1,1", *CHEAP, check=False)
    out = grid.stdout + grid.stderr
    assert grid.returncode == 1
    assert out.count(ERROR_LINE) == 1, out
    assert "s, 2 jobs (1 completed, 1 failed)" in out, out
    # The summary comes before the error, so the traceback stays the last thing printed.
    assert out.index(": done in ") < out.index(ERROR_LINE)
    parent, _ = _parent_from(out)
    statuses = sorted(k.info.status for k in _children(client, parent))
    assert statuses == ["FAILED", "FINISHED"]


# -- names, in-process ----------------------------------------------------------------------
def test_names_leave_out_backend_hydra_and_secrets() -> None:
    from runner.tracking.redact import redact_override
    from runner.tracking.runs import NAME_MAX, job_name, varied_overrides

    job = [
        redact_override(o)
        for o in (
            "model=xgb",
            "backend.uri=http://u:pw@host:5000",
            "hydra.sweeper.n_trials=3",
            "+db.password=hunter2",
            "lr=0.0123456789",
            "sweep=xgb_iris",
            "seed=1",
        )
    ]
    sweep = [redact_override(o) for o in ("model=xgb", "seed=1", "sweep=xgb_iris")]
    varied = varied_overrides(job, sweep)
    name = job_name({"model": "xgb", "dataset": "iris"}, varied)
    # The secret's key says it varies; its value is never shown.
    assert name == "xgb-iris db.password=*** lr=0.01235", name
    long = job_name({"model": "m", "dataset": "d"}, [f"k{i}=v{i}" for i in range(40)])
    assert len(long) == NAME_MAX and long.endswith("...")
    assert job_name({"model": "m", "dataset": "d"}, [f"k{i}=v{i}" for i in range(40)]) == long


def test_server_summary_links_to_the_runs_page(
    workdir: Path,
    sqlite_server: Service,  # noqa: F811 - the fixture imported above
) -> None:
    proc = run_cli("backend=server", f"backend.uri={sqlite_server.url}", "seed=7", *CHEAP)
    out = proc.stdout + proc.stderr
    found = re.search(r"open (http://\S+/#/experiments/(\d+)/runs/([0-9a-f]{32}))\n", out)
    assert found is not None, out
    url, exp, run_id = found.groups()
    assert url == f"{sqlite_server.url.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(sqlite_server.url).get_run(run_id)
    assert run.info.experiment_id == exp and run.info.run_name == "logreg-iris seed=7"
    assert "mlflow ui" not in out  # a server needs no `mlflow ui`


# -- long admin commands --------------------------------------------------------------------
@contextlib.contextmanager
def _unsynced_sqlite() -> Iterator[None]:
    """SQLite connections opened in this process in the block skip ``fsync`` on commit.

    For the hundreds of runs a test makes before the command under test: MLflow commits
    each call (three a run), and the commits' ``fsync`` took 70 of the 100 ms a run took
    here. The data is the same and on disk for the command's process (the OS has it);
    only a crash of the machine itself could lose it. The commands run in their own
    processes, with MLflow's settings.
    """
    import sqlalchemy
    from sqlalchemy import event

    def unsynced(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection.__class__.__module__.startswith("sqlite3"):
            dbapi_connection.execute("PRAGMA synchronous = OFF")

    event.listen(sqlalchemy.engine.Engine, "connect", unsynced)
    try:
        yield
    finally:
        event.remove(sqlalchemy.engine.Engine, "connect", unsynced)


def _make_runs(
    uri: str, n: int, *, tags: dict[str, str] | None = None, status: str = "FINISHED"
) -> list[str]:
    """``n`` finished runs with a param, a metric and a tag each, quickly (no jobs)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    with _unsynced_sqlite():
        client = MlflowClient(uri)
        exp = client.create_experiment("bulk")
        ids = []
        now = int(time.time() * 1000)
        for i in range(n):
            run = client.create_run(exp, run_name=f"r{i}", tags={**(tags or {}), "k": "v"})
            rid = run.info.run_id
            client.log_batch(
                rid, metrics=[Metric("m", float(i), now, 0)], params=[Param("i", str(i))]
            )
            client.set_terminated(rid, status=status)
            ids.append(rid)
    return ids


def _progress_lines(err: str, what: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(rf"^{what}: (\d+)/(\d+) \(\d+%\)", err, re.M)]


def test_sync_shows_progress_over_hundreds_of_runs(workdir: Path, _template_db: Path) -> None:
    import shutil

    buffer = workdir / ".runner_buffer" / "mlflow.db"
    buffer.parent.mkdir()
    shutil.copy(_template_db, buffer)
    target = workdir / "server.db"
    shutil.copy(_template_db, target)
    n = 150
    _make_runs(f"sqlite:///{buffer}", n, tags={contract.BUFFERED_FOR: f"sqlite:///{target}"})
    proc = run_cli(module="runner.sync", timeout=600)
    lines = _progress_lines(proc.stderr, "sync")
    assert [d for d, _ in lines] == [n * k // 10 for k in range(1, 11)], proc.stderr
    assert all(t == n for _, t in lines)
    assert f"synced {n} run(s)" in proc.stdout


def _store(workdir: Path, template: Path) -> str:
    import shutil

    db = workdir / "mlflow.db"
    shutil.copy(template, db)
    return f"sqlite:///{db}"


def _lifecycle(*args: str, uri: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_cli(
        *args, "--older-than", "0s", "--yes", "--tracking-uri", uri,
        module="runner.lifecycle", env=env, timeout=600,
    )  # fmt: skip


def test_gc_shows_progress_and_is_quiet_on_request(workdir: Path, _template_db: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = _store(workdir, _template_db)
    n = 150
    client = MlflowClient(uri)
    ids = _make_runs(uri, n + 10)
    with _unsynced_sqlite():
        for rid in ids[:10]:
            client.delete_run(rid)
    few = _lifecycle("gc", uri=uri)  # ten runs: too few for a progress display
    assert "gc: done" in few.stdout and "%)" not in few.stderr, few.stderr
    with _unsynced_sqlite():
        for rid in ids[10:]:
            client.delete_run(rid)
    quiet = _lifecycle("gc", "--dry-run", uri=uri, env={"RUNNER_PROGRESS": "none"})
    assert "dry run, nothing changed" in quiet.stdout and "%)" not in quiet.stderr, quiet.stderr
    proc = _lifecycle("gc", uri=uri)
    lines = _progress_lines(proc.stderr, "gc")
    assert [d for d, _ in lines] == [n * k // 10 for k in range(1, 11)], proc.stderr
    assert proc.stdout.count("has been permanently deleted") == n
    # The plan reads each deleted run and measures its artifacts first: progress there too.
    for step in ("reading deleted runs", "measuring artifacts", "measuring what is left"):
        assert f"gc: {step}: {n}/{n} (100%)" in proc.stderr, proc.stderr


def test_prune_shows_progress_over_hundreds_of_runs(workdir: Path, _template_db: Path) -> None:
    uri = _store(workdir, _template_db)
    n = 120
    _make_runs(uri, n, status="FAILED")
    proc = _lifecycle("prune-failed", uri=uri)
    lines = _progress_lines(proc.stderr, "prune-failed")
    assert [d for d, _ in lines] == [n * k // 10 for k in range(1, 11)], proc.stderr
    assert f"prune-failed: done, {n} actions." in proc.stdout


def test_progress_modes_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Log lines per tenth; a rich bar inside another prints lines (rich allows one live)."""
    import io

    from runner.cli import CommandProgress

    out = io.StringIO()
    with CommandProgress("x", 99, stream=out) as p:  # under the threshold: nothing
        for _ in range(99):
            p.advance()
    assert out.getvalue() == ""
    monkeypatch.setenv("RUNNER_PROGRESS", "rich")
    outer, inner = io.StringIO(), io.StringIO()
    with CommandProgress("outer", 100, stream=outer) as p:
        p.advance()
        with CommandProgress("inner", 100, stream=inner) as q:
            for _ in range(100):
                q.advance()
        p.advance(99)
    assert _progress_lines(inner.getvalue(), "inner")[-1] == (100, 100)
    assert "100/100" in outer.getvalue()
