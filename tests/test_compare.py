"""``python -m runner.compare`` on runs made by the real runner (grid sweeps via the CLI)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from runner import compare
from tests.conftest import run_cli
from tests.helpers import sweeps_into_one_store

FAST = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")
# One job fails (C must be positive): the selection holds a FAILED run.
GRID = ("-m", "model=logreg", "dataset=iris", "model.C=0.01,0.1,1.0,-1", *FAST)
# The MLP logs per-epoch train_loss/val_loss: the report's learning curves.
MLP = ("-m", "model=mlp", "dataset=iris", "model.epochs=4", "lr=0.01,0.1", *FAST)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> dict[str, Any]:
    """Experiment ``iris``: a 4-job logreg grid (one FAILED) and a 2-job MLP grid."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("compare")
    # Two sweeps at once into the migrated store; the grid exits non-zero because of its
    # failing job.
    uri, db, done = sweeps_into_one_store(root, _template_db, {"g": GRID, "m": MLP}, check=False)
    g, m = done["g"], done["m"]
    assert g.returncode != 0, g.stdout + g.stderr  # the C=-1 job failed
    assert m.returncode == 0, m.stdout + m.stderr
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("iris")
    parents = client.search_runs([exp.experiment_id], "tags.`runner.kind` = 'sweep'")
    grid_parent = next(p for p in parents if "model.C" in p.data.tags["runner.overrides"])
    return {"uri": uri, "db": db, "grid": grid_parent.info.run_id}


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = compare.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _rows(out: str) -> list[list[str]]:
    """The data rows of a printed rich table, as lists of cell texts."""
    rows = []
    for line in out.splitlines():
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def _header(out: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith("┃"))
    return [c.strip() for c in line.strip("┃").split("┃")]


def test_sweep_table_rows_order_and_columns(store: dict[str, Any], capsys: Any) -> None:
    rc, out, _ = _main(capsys, "--sweep", store["grid"], "--tracking-uri", store["uri"])
    assert rc == 0
    assert "4 of 4 runs" in out and "by metrics.val_accuracy (maximize)" in out
    header = _header(out)
    # Only the param that varies; the objective first among the metrics.
    assert header[:5] == ["#", "run", "run_id", "status", "model.C"]
    assert "lr" not in header and "seed" not in header and header[5] == "val_accuracy"
    rows = _rows(out)
    assert [r[4] for r in rows] == ["1.0", "0.1", "0.01", "-1"]
    assert [r[3] for r in rows] == ["FINISHED"] * 3 + ["FAILED"]
    accs = [float(r[5]) for r in rows[:3]]
    assert accs == sorted(accs, reverse=True) and accs[0] > accs[-1]
    assert rows[-1][5] == "-"
    assert all(r[1].startswith("logreg-iris") for r in rows)


def test_experiment_scope_uses_env_uri_and_filter(
    store: dict[str, Any], capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    rc, out, _ = _main(capsys, "--experiment", "iris")
    assert rc == 0 and "6 of 6 runs" in out  # sweep parents are left out
    header = _header(out)
    assert {"model", "lr", "model.C"} <= set(header)
    assert {r[1].split("-")[0] for r in _rows(out)} == {"logreg", "mlp"}
    rc, out, _ = _main(capsys, "--experiment", "iris", "--filter", "params.model = 'mlp'")
    assert rc == 0 and [r[1][:3] for r in _rows(out)] == ["mlp", "mlp"]
    assert "lr" in _header(out) and "model.C" not in _header(out)


def test_sort_direction_top_and_metrics(store: dict[str, Any], capsys: Any) -> None:
    base = ("--sweep", store["grid"], "--tracking-uri", store["uri"])
    # A loss: smaller first, guessed from the name.
    rc, out, _ = _main(capsys, *base, "--sort", "metrics.val_log_loss")
    assert rc == 0 and "(minimize)" in out
    losses = [float(r[_header(out).index("val_log_loss")]) for r in _rows(out)[:3]]
    assert losses == sorted(losses)
    rc, out, _ = _main(capsys, *base, "--sort", "val_log_loss", "--desc")
    losses_desc = [float(r[_header(out).index("val_log_loss")]) for r in _rows(out)[:3]]
    assert losses_desc == sorted(losses, reverse=True)
    rc, out, _ = _main(capsys, *base, "--sort", "params.model.C", "--top", "2")
    assert [r[4] for r in _rows(out)] == ["-1", "0.01"]
    rc, out, _ = _main(capsys, *base, "--top", "2", "--metrics", "val_f1,fit_time_s")
    assert _header(out)[-2:] == ["val_f1", "fit_time_s"] and "val_accuracy" not in _header(out)
    assert len(_rows(out)) == 2
    rc, out, _ = _main(capsys, *base, "--limit", "1")
    assert len(_rows(out)) == 1 and "... and 3 more" in out


def test_csv_every_run_param_and_metric(store: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    path = tmp_path / "out" / "runs.csv"
    rc, _, err = _main(
        capsys, "--experiment", "iris", "--tracking-uri", store["uri"], "--csv", str(path)
    )
    assert rc == 0 and "wrote 6 runs" in err
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    n = len(compare.CSV_FIXED_COLUMNS)
    assert tuple(header[:n]) == compare.CSV_FIXED_COLUMNS
    params = [h for h in header if h.startswith("params.")]
    metrics = [h for h in header if h.startswith("metrics.")]
    assert header[n:] == params + metrics and params == sorted(params)
    assert metrics == sorted(metrics)
    assert {"params.model.C", "params.model.epochs", "metrics.val_loss"} <= set(header)
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 7)]
    client = MlflowClient(store["uri"])
    for row in rows:
        run = client.get_run(row["run_id"])
        assert row["status"] == run.info.status and row["run_name"] == run.info.run_name
        for k, v in run.data.params.items():
            assert row[f"params.{k}"] == v
        for k, v in run.data.metrics.items():
            assert float(row[f"metrics.{k}"]) == v  # full precision
        for k in metrics:
            if k[len("metrics.") :] not in run.data.metrics:
                assert row[k] == ""
    failed = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed) == 1 and failed[0]["metrics.val_accuracy"] == ""
    assert failed[0]["parent_run_id"] == store["grid"] and failed[0]["rank"] == "6"


def test_tag_best_and_moving(store: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"  # a copy: tagging must not change the other tests' store
    shutil.copy(store["db"], db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    base = ("--sweep", store["grid"], "--tracking-uri", uri, "--tag-best")

    def best() -> list[str]:
        runs = client.search_runs(
            [client.get_run(store["grid"]).info.experiment_id], "tags.`runner.best` = 'true'"
        )
        return sorted(r.data.params["model.C"] for r in runs)

    rc, _, err = _main(capsys, *base)
    assert rc == 0 and best() == ["1.0"] and "tagged 1, untagged 0" in err
    rc, _, err = _main(capsys, *base, "--top", "2")
    assert best() == ["0.1", "1.0"] and "tagged 1, untagged 0" in err
    rc, _, err = _main(capsys, *base)
    assert best() == ["1.0"] and "tagged 0, untagged 1" in err
    # --sort says otherwise: the worst accuracy is now "best"; the tag moves.
    rc, _, err = _main(capsys, *base, "--asc")
    assert rc == 0 and best() == ["0.01"] and "tagged 1, untagged 1" in err
    # The CSV shows the tag.
    rc, _, _ = _main(capsys, *base[:4], "--csv", str(tmp_path / "r.csv"))
    with (tmp_path / "r.csv").open() as f:
        flags = {r["params.model.C"]: r["best"] for r in csv.DictReader(f)}
    assert flags == {"1.0": "", "0.1": "", "0.01": "true", "-1": ""}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--experiment", "nope"], r"experiment 'nope' does not exist.*'iris'"),
        (["--sweep", "0" * 32], r"run '0{32}' does not exist"),
        # Any text is a sweep name (matched in Python, never pasted into a filter).
        (["--sweep", "x' or '1"], r"no sweep is named \"x' or '1\".*the sweeps of this"),
        (
            ["--experiment", "iris", "--sort", "metrics.f2_score"],
            r"no selected run has the metric 'f2_score'.*val_accuracy",
        ),
        (
            ["--experiment", "iris", "--filter", "params.model = "],
            r"MLflow rejected the filter 'params.model = ': Invalid clause",
        ),
        (["--experiment", "iris", "--top", "0"], r"--top is 0"),
    ],
)
def test_bad_input(store: dict[str, Any], capsys: Any, argv: list[str], message: str) -> None:
    rc, _, err = _main(capsys, *argv, "--tracking-uri", store["uri"])
    assert rc == 2
    assert re.search(message, err, re.S), err
    assert "Traceback" not in err and err.startswith("error: ")


def test_empty_selection_and_missing_store(
    store: dict[str, Any], capsys: Any, tmp_path: Path
) -> None:
    argv = ("--experiment", "iris", "--filter", "params.model = 'xgb'")
    rc, out, err = _main(capsys, *argv, "--tracking-uri", store["uri"])
    assert rc == 0 and "0 of 0 runs" in out and "no runs selected" in err
    rc, _, _ = _main(capsys, *argv, "--tracking-uri", store["uri"], "--fail-empty")
    assert rc == 1
    rc, _, err = _main(capsys, "--experiment", "iris")  # cwd has no mlflow.db
    assert rc == 2 and "there is no tracking store at sqlite:///" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_help_via_cli() -> None:
    proc = run_cli("--help", module="runner.compare")
    assert "--sweep SWEEP" in proc.stdout and "--tag-best" in proc.stdout
    assert "--all-sweeps" in proc.stdout


def _report(store: dict[str, Any], path: Path, *argv: str) -> str:
    rc = compare.main([*argv, "--tracking-uri", store["uri"], "--html", str(path)])
    assert rc == 0
    return path.read_text(encoding="utf-8")


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, dict(attrs)))

    Collect().feed(page)
    return found


def test_html_report_structure(store: dict[str, Any], tmp_path: Path) -> None:
    from runner.compare.report import param_importances

    page = _report(store, tmp_path / "sweep.html", "--sweep", store["grid"])
    # Self-contained: plotly.js inline, no tag that loads anything from elsewhere (the
    # plotly.js source itself mentions a CDN in strings; HTMLParser skips script bodies).
    tags = _tags(page)
    assert not [a for t, a in tags if t in ("script", "img", "iframe") and a.get("src")]
    assert not [a for t, a in tags if t == "link" and a.get("href")]
    assert len(page) > 3_000_000 and page.count("Plotly.newPlot(") >= 4
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids[:3] == ["ranked", "parallel", "vs-model.C"]
    assert "trials" in ids and "importances" in ids and "curves" not in ids
    head = page[page.index("<header>") : page.index("</header>")]
    assert "<b>4</b> runs (1 FAILED, 3 FINISHED)" in head and "metrics.val_accuracy" in head
    assert 'id="best"' in head and "model.C=1.0" in head
    # The grid's C (0.01..1.0) spans two decades: a log axis, in the parallel coordinates too.
    assert '"label":"model.C (log)"' in page
    # Each heading once: the figures carry no title of their own.
    assert page.count("<h2>") == len(ids) and '"title":{"text":"val_accuracy vs' not in page
    table = page[page.index('<table class="runs"') : page.index("</table>")]
    assert table.count("<tr") == 5 and table.index("FAILED") > table.index("FINISHED")
    # Importances come from the runs' params and metrics alone (no Optuna study needed).
    from mlflow.tracking import MlflowClient

    runs = compare.select_runs(MlflowClient(store["uri"]), sweep=store["grid"])
    imp = param_importances(runs, ["model.C"], objective="val_accuracy", direction="maximize")
    assert list(imp) == ["model.C"] and imp["model.C"] == pytest.approx(1.0)
    # Experiment-wide: the MLP runs' learning curves (their val_loss history, 4 epochs).
    page = _report(store, tmp_path / "exp.html", "--experiment", "iris", "--top", "3")
    assert 'id="curves"' in page and re.search(r'"name":"mlp-iris[^"]* val_loss"', page)
    # The MLP runs have no model.C: on the parallel coordinates' tick "-", not anywhere.
    dim = re.search(r'\{"label":"model.C \(log\)"[^}]*\}', page)
    assert dim is not None and '"ticktext":["-",' in dim.group(0)
    table = page[page.index('<table class="runs"') : page.index("</table>")]
    assert table.count("<tr") == 4


def keep_artifact(path: Path) -> None:
    """Keep a test's output for a person to look at: a copy in ``$RUNNER_TEST_ARTIFACTS``."""
    where = os.environ.get("RUNNER_TEST_ARTIFACTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(where) / path.name)


def _browser() -> Any:
    """A headless Chromium from Debian's package, or skip (fail under CI)."""
    playwright = pytest.importorskip("playwright.sync_api")
    try:
        pw = playwright.sync_playwright().start()
    except Exception as e:  # pragma: no cover - environment
        if os.environ.get("CI"):
            raise
        pytest.skip(f"playwright cannot start: {e}")
    try:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
    except Exception as e:
        pw.stop()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"chromium cannot start (apt-get install -y chromium): {e}")
    return pw, browser


def watched_page(browser: Any, *, width: int, height: int) -> tuple[Any, list[str], list[str]]:
    """A new page, and what goes wrong on it: script and console errors, failed requests."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    return page, errors, failed


def test_html_report_renders_in_chromium(store: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    _report(store, path, "--experiment", "iris")
    pw, browser = _browser()
    try:
        page, errors, failed = watched_page(browser, width=1400, height=900)
        page.goto(path.as_uri())
        n_figs = page.locator("div.plotly-graph-div").count()
        assert n_figs >= 6
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot').length >= {n_figs}", timeout=30_000
        )
        # Every figure drew its SVG; the parallel coordinates and curves have their traces.
        assert page.locator(".js-plotly-plot .main-svg").count() >= n_figs
        assert page.locator("#parallel .parcoords").count() >= 1
        assert page.locator("#curves .scatterlayer .trace").count() >= 2
        assert page.locator("#importances .barlayer .trace").count() == 1
        assert errors == [] and failed == []
        # The header names the best run; trial ticks are integers, as drawn.
        assert page.locator("#best").is_visible()
        for figure in ("#trials", "#curves"):
            ticks = page.locator(f"{figure} .xtick text").all_text_contents()
            assert ticks and all(t.strip().isdigit() for t in ticks), (figure, ticks)
            assert len(ticks) == len(set(ticks)), (figure, ticks)
        shot = tmp_path / "compare-report.png"
        page.screenshot(path=str(shot), full_page=True)
        info = {"figures": n_figs, "html_bytes": path.stat().st_size}
        (tmp_path / "compare-report.json").write_text(json.dumps(info))
        keep_artifact(shot)
        keep_artifact(tmp_path / "compare-report.json")
    finally:
        browser.close()
        pw.stop()
