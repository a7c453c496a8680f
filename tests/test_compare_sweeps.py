"""``python -m runner.compare`` sweep against sweep, and the report that shows it.

Two real Optuna studies (TPE and random, 6 logreg/iris trials each) made with the real CLI
into one SQLite store, once per module; edge cases (two parents with one name, a grid
parent, known durations) are written with a plain ``MlflowClient`` into experiment ``edge``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runner import compare
from runner.compare.ranking import fmt_param, fmt_value
from tests.conftest import run_cli
from tests.test_compare import FAST, _browser, _header, _rows, keep_artifact

#: C on a log scale over five decades: the report's parallel coordinates get a log axis.
SPACE = "model.C=tag(log, interval(0.001, 100.0))"
STUDIES = {
    # TPE after 3 random startup trials (Optuna's default of 10 would make it random here).
    "tpe-iris": ("hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.n_startup_trials=3"),
    # Another seed: the same seed would draw TPE's startup trials again.
    "random-iris": ("hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1"),
}
T0 = 1_700_000_000_000  # the edge runs' clock (ms)


def _optuna(name: str, extra: tuple[str, ...], cwd: Path, env: dict[str, str]) -> Any:
    return run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweeper.study_name={name}",
        *extra,
        "model=logreg",
        "dataset=iris",
        SPACE,
        *FAST,
        cwd=cwd,
        env=env,
    )


def _edge(client: Any) -> dict[str, Any]:
    """Experiment ``edge``: two Optuna-like parents named ``dup``, and a grid parent."""
    exp = client.create_experiment("edge")
    ids: dict[str, Any] = {"dup": []}

    def child(parent: str, i: int, status: str, acc: float | None, tags: dict[str, str]) -> None:
        run = client.create_run(
            exp,
            start_time=T0 + 1000 * i,
            run_name=f"child-{i}",
            tags={"mlflow.parentRunId": parent, "runner.kind": "job", **tags},
        )
        params = {"objective": "val_accuracy", "direction": "maximize", "x": str(0.5 + i)}
        from mlflow.entities import Metric, Param

        client.log_batch(
            run.info.run_id,
            params=[Param(k, v) for k, v in params.items()],
            metrics=[Metric("val_accuracy", acc, T0, 0)] if acc is not None else [],
        )
        client.set_terminated(run.info.run_id, status=status, end_time=T0 + 1000 * i + 500)

    for k, sampler in enumerate(("tpe", "random")):
        p = client.create_run(
            exp,
            start_time=T0 + k,
            run_name="dup",
            tags={"runner.kind": "sweep", "runner.sweeper": "optuna"},
        )
        from mlflow.entities import Param

        client.log_batch(
            p.info.run_id,
            params=[
                Param("study_name", "dup"),
                Param("sampler", sampler),
                Param("pruner", "median"),
                Param("space", json.dumps({"x": "interval(0, 10)"})),
            ],
        )
        for i in range(3):
            state = "PRUNED" if i == 2 and sampler == "tpe" else "COMPLETE"
            child(
                p.info.run_id,
                i,
                "FINISHED",
                0.5 + 0.1 * i + 0.01 * k,
                {"runner.trial_number": str(i), "runner.trial_state": state},
            )
        client.set_terminated(p.info.run_id, end_time=T0 + k + 65_000)  # 1m05s
        ids["dup"].append(p.info.run_id)
    g = client.create_run(exp, start_time=T0, run_name="grid over x", tags={"runner.kind": "sweep"})
    for i, (status, acc) in enumerate((("FINISHED", 0.9), ("FINISHED", 0.95), ("FAILED", None))):
        child(g.info.run_id, i, status, acc, {"runner.job_num": str(i)})
    client.set_terminated(g.info.run_id, end_time=T0 + 3_723_000)  # 1h02m
    ids["grid"] = g.info.run_id
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> dict[str, Any]:
    """Experiment ``iris``: studies ``tpe-iris`` and ``random-iris``; experiment ``edge``."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("sweeps")
    db = root / "mlflow.db"
    shutil.copy(_template_db, db)
    uri = f"sqlite:///{db}"
    env = {"MLFLOW_TRACKING_URI": uri}
    # Each study in its own launch directory (its own optuna.db), both at once.
    with ThreadPoolExecutor(2) as pool:
        futures = []
        for name, extra in STUDIES.items():
            (root / name).mkdir()
            futures.append(pool.submit(_optuna, name, extra, root / name, env))
        for f in futures:
            f.result()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("iris")
    assert exp is not None
    parents = client.search_runs([exp.experiment_id], "tags.`runner.kind` = 'sweep'")
    by_name = {p.data.params["study_name"]: p for p in parents}
    assert set(by_name) == set(STUDIES)
    children = {
        name: client.search_runs(
            [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'"
        )
        for name, p in by_name.items()
    }
    return {
        "uri": uri,
        "db": db,
        "parents": by_name,
        "children": children,
        "edge": _edge(client),
    }


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = compare.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _tables(out: str) -> list[str]:
    """The printed tables (title line and table), split at the blank line between them."""
    return [t for t in out.split("\n\n") if "┃" in t]


def _best(runs: list[Any]) -> Any:
    """The best run by val_accuracy; of equals, the oldest (compare's rule, and Optuna's)."""
    by_age = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    return max(by_age, key=lambda r: r.data.metrics.get("val_accuracy", -1.0))


def test_two_sweeps_by_study_name(store: dict[str, Any], capsys: Any) -> None:
    argv = ("--sweep", "tpe-iris", "--sweep", "random-iris", "--tracking-uri", store["uri"])
    rc, out, _ = _main(capsys, *argv)
    assert rc == 0
    sweeps, runs = _tables(out)
    assert sweeps.startswith("2 sweeps, by best metrics.val_accuracy (maximize)")
    assert _header(sweeps) == [
        "#",
        "sweep",
        "run_id",
        "sampler",
        "pruner",
        "trials",
        "best val_accuracy",
        "best params",
        "duration",
    ]
    rows = {r[1]: r for r in _rows(sweeps)}
    assert set(rows) == set(STUDIES)
    for name, sampler in (("tpe-iris", "tpe"), ("random-iris", "random")):
        row, parent = rows[name], store["parents"][name]
        best = _best(store["children"][name])
        assert row[2] == parent.info.run_id[:8] and row[3] == sampler and row[4] == "none"
        assert row[5] == "6 complete"
        # The best of its runs is what the study itself recorded as best.
        assert row[6] == fmt_value(best.data.metrics["val_accuracy"])
        assert best.data.metrics["val_accuracy"] == pytest.approx(parent.data.metrics["best_value"])
        assert row[7] == f"model.C={fmt_param(best.data.params['model.C'])}"
        assert best.data.tags["runner.trial_number"] == parent.data.tags["runner.best_trial_number"]
        assert re.fullmatch(r"\d+\.\ds|\dm\d\ds", row[8]), row[8]
    # Best sweep first; a tie keeps the order given.
    values = [float(r[6]) for r in _rows(sweeps)]
    assert values == sorted(values, reverse=True)
    # The runs of both, one table, with their sweep.
    assert runs.startswith("12 of 12 runs, sweeps ('")
    header = _header(runs)
    assert header[:4] == ["#", "run", "sweep", "run_id"] and "model.C" in header
    got = sorted(r[2] for r in _rows(runs))
    assert got == sorted(["tpe-iris"] * 6 + ["random-iris"] * 6)
    accs = [float(r[header.index("val_accuracy")]) for r in _rows(runs)]
    assert accs == sorted(accs, reverse=True)
    # Rounded params in the table (Optuna's floats have 17 digits).
    assert all(len(r[header.index("model.C")]) <= 9 for r in _rows(runs))


def test_all_sweeps_of_an_experiment(store: dict[str, Any], capsys: Any) -> None:
    base = ("--tracking-uri", store["uri"])
    rc, out, _ = _main(capsys, "--experiment", "iris", "--all-sweeps", *base)
    assert rc == 0
    sweeps, runs = _tables(out)
    assert {r[1] for r in _rows(sweeps)} == set(STUDIES)
    assert "every sweep ('" in runs and len(_rows(runs)) == 12
    rc, _, err = _main(capsys, "--all-sweeps", *base)
    assert rc == 2 and "--all-sweeps compares every sweep of one experiment" in err
    rc, _, err = _main(capsys, "--experiment", "iris", "--all-sweeps", "--sweep", "x", *base)
    assert rc == 2 and "pass one of the two" in err
    rc, _, err = _main(capsys, "--experiment", "Default", "--all-sweeps", *base)
    assert rc == 2 and "experiment 'Default' has no sweeps" in err


def test_one_sweep_by_name_is_one_sweep_by_id(store: dict[str, Any], capsys: Any) -> None:
    pid = store["parents"]["tpe-iris"].info.run_id
    base = ("--tracking-uri", store["uri"])
    rc, by_id, _ = _main(capsys, "--sweep", pid, *base)
    assert rc == 0
    rc, by_name, _ = _main(capsys, "--sweep", "tpe-iris", *base)
    assert rc == 0
    # No table of sweeps with one sweep: the same table as by id, only the title names it.
    assert len(_tables(by_id)) == 1 and "6 of 6 runs, sweep " + pid in by_id
    assert by_name == by_id.replace(f"sweep {pid}", "sweep tpe-iris")
    # The same sweep twice is one sweep.
    rc, twice, _ = _main(capsys, "--sweep", "tpe-iris", "--sweep", pid, *base)
    assert rc == 0 and len(_tables(twice)) == 1 and "6 of 6 runs" in twice


def test_unknown_sweep_lists_the_experiments_sweeps(store: dict[str, Any], capsys: Any) -> None:
    base = ("--tracking-uri", store["uri"])
    rc, _, err = _main(capsys, "--experiment", "iris", "--sweep", "tpe", *base)
    assert rc == 2 and err.startswith("error: no sweep is named 'tpe'")
    assert "the sweeps of experiment 'iris' are: " in err
    for name, parent in store["parents"].items():
        assert f"{name!r} ({parent.info.run_id})" in err
    assert "dup" not in err  # another experiment's
    # Without --experiment: every experiment's, each with its experiment.
    rc, _, err = _main(capsys, "--sweep", "nope", *base)
    assert rc == 2 and "experiment 'edge'" in err and "experiment 'iris'" in err
    # A run id that is no run: said so, and the sweeps are listed.
    rc, _, err = _main(capsys, "--experiment", "edge", "--sweep", "f" * 32, *base)
    assert rc == 2 and f"run '{'f' * 32}' does not exist" in err and "'grid over x'" in err
    assert "Traceback" not in err


def test_ambiguous_sweep_name_lists_the_candidates(store: dict[str, Any], capsys: Any) -> None:
    for scope in (("--experiment", "edge"), ()):
        rc, _, err = _main(capsys, *scope, "--sweep", "dup", "--tracking-uri", store["uri"])
        assert rc == 2 and "the sweep name 'dup' is ambiguous: 2 sweep parent runs" in err
        assert all(i in err for i in store["edge"]["dup"]) and "--sweep <run id>" in err
    # Either one by id works.
    rc, out, _ = _main(capsys, "--sweep", store["edge"]["dup"][1], "--tracking-uri", store["uri"])
    assert rc == 0 and "3 of 3 runs" in out


def test_grid_and_optuna_parents_in_one_table(store: dict[str, Any], capsys: Any) -> None:
    rc, out, _ = _main(
        capsys, "--experiment", "edge", "--all-sweeps", "--tracking-uri", store["uri"]
    )
    assert rc == 0
    sweeps, runs = _tables(out)
    rows = _rows(sweeps)
    # The grid's best (0.95) beats both studies' (0.71; 0.7, a pruned trial's).
    assert [r[1] for r in rows] == ["grid over x", "dup", "dup"]
    grid, random_, tpe = rows
    assert grid[3:] == ["grid", "-", "2 complete, 1 failed", "0.95", "x=1.5", "1h02m"]
    assert tpe[3:] == ["tpe", "median", "2 complete, 1 pruned", "0.7", "x=2.5", "1m05s"]
    assert random_[3:6] == ["random", "median", "3 complete"] and random_[6] == "0.71"
    assert len(_rows(runs)) == 9


def test_csv_of_several_sweeps(store: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    rc, _, err = _main(
        capsys, "--experiment", "iris", "--all-sweeps", "--tracking-uri", store["uri"],
        "--csv", str(path),
    )  # fmt: skip
    assert rc == 0 and "wrote 12 runs" in err
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_id = {r.info.run_id: r for rs in store["children"].values() for r in rs}
    assert {r["run_id"] for r in rows} == set(by_id)
    parents = {p.info.run_id for p in store["parents"].values()}
    for row in rows:
        run = by_id[row["run_id"]]
        assert row["parent_run_id"] in parents
        assert row["params.model.C"] == run.data.params["model.C"]  # full precision
        assert float(row["metrics.val_accuracy"]) == run.data.metrics["val_accuracy"]


# -- the report ---------------------------------------------------------------------------


def _figures(page: str) -> dict[str, list[dict[str, Any]]]:
    """Each section's figures as ``{"data": ..., "layout": ...}``, from Plotly.newPlot calls."""
    decoder = json.JSONDecoder()
    out: dict[str, list[dict[str, Any]]] = {}
    for m in re.finditer(r'<section id="([^"]+)"', page):
        end = page.find("</section>", m.end())
        chunk = page[m.end() : end]
        figs = []
        for call in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', chunk):
            data, i = decoder.raw_decode(chunk, call.end())
            i = chunk.index("{", i)
            layout, _ = decoder.raw_decode(chunk, i)
            figs.append({"data": data, "layout": layout})
        out[m.group(1)] = figs
    return out


def _report(store: dict[str, Any], path: Path, *argv: str) -> str:
    rc = compare.main([*argv, "--tracking-uri", store["uri"], "--html", str(path)])
    assert rc == 0
    return path.read_text(encoding="utf-8")


def test_report_of_two_sweeps(store: dict[str, Any], tmp_path: Path) -> None:
    page = _report(store, tmp_path / "r.html", "--sweep", "tpe-iris", "--sweep", "random-iris")
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    assert ids[:4] == ["sweeps", "overlay-trial", "overlay-time", "ranked"]
    for i in (1, 2):
        at = ids.index(f"sweep-{i}")
        assert ids[at + 1 : at + 5] == [f"s{i}-ranked", f"s{i}-parallel", f"s{i}-vs-model.C",
                                        f"s{i}-trials"]  # fmt: skip
        assert f"s{i}-importances" in ids
    figs = _figures(page)
    for by in ("trial", "time"):
        (fig,) = figs[f"overlay-{by}"]
        names = {t.get("name") for t in fig["data"] if t.get("showlegend") is not False}
        assert names == {"tpe-iris (tpe)", "random-iris (random)"}
        lines = [t for t in fig["data"] if t["mode"] == "lines"]
        for t in lines:  # best so far: never worse than before
            assert t["y"] == sorted(t["y"]) and t["line"]["shape"] == "hv"
    axis = figs["overlay-trial"][0]["layout"]["xaxis"]
    assert axis["tickformat"] == "d" and axis["dtick"] == 1  # 6 trials: 0, 1, ..., 5
    assert figs["overlay-time"][0]["layout"]["xaxis"]["rangemode"] == "tozero"
    # No figure carries a title: its section's heading is the only one.
    for sid, fs in figs.items():
        for f in fs:
            assert not f["layout"].get("title", {}).get("text"), sid
    # Log axis in the parallel coordinates: the space says tag(log, ...).
    first = re.search(r"<h2>Sweep 1: ([^<]+)</h2>", page)
    assert first is not None and first.group(1) in STUDIES
    child = store["children"][first.group(1)]
    (par,) = figs["s1-parallel"]
    dims = {d["label"]: d for d in par["data"][0]["dimensions"]}
    c = dims["model.C (log)"]
    assert sorted(c["values"]) == pytest.approx(
        sorted(math.log10(float(r.data.params["model.C"])) for r in child)
    )
    assert "0.01" in c["ticktext"] and "1" in c["ticktext"]
    (vs,) = figs["s1-vs-model.C"]
    assert vs["layout"]["xaxis"]["type"] == "log"
    # Full precision on hover, rounded in the table (and the full value as the cell's title).
    run = _best(child)
    acc = run.data.metrics["val_accuracy"]
    assert repr(acc) in json.dumps(vs["data"][0]["customdata"])
    assert f'title="{acc!r}">{fmt_value(acc)}</td>' in page
    raw = run.data.params["model.C"]
    assert f'<td title="{raw}">{fmt_param(raw)}</td>' in page and fmt_param(raw) != raw
    # One param: a readable importance chart (a note, a labelled bar).
    (imp,) = figs["s1-importances"]
    assert imp["data"][0]["text"] == ["1.00"] and imp["layout"]["height"] >= 200
    assert "Only model.C varies" in page
    # The header: counts, and the best run of both sweeps.
    head = page[page.index("<header>") : page.index("</header>")]
    assert "<b>12</b> runs (12 FINISHED) in <b>2</b> sweeps" in head
    best = _best([r for rs in store["children"].values() for r in rs])
    assert best.data.metrics["val_accuracy"] == max(
        r.data.metrics["val_accuracy"] for rs in store["children"].values() for r in rs
    )
    assert 'id="best"' in head and f'= <b title="{best.data.metrics["val_accuracy"]!r}">' in head


def test_report_of_sweeps_renders_in_chromium(store: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "sweeps.html"
    _report(store, path, "--experiment", "iris", "--all-sweeps")
    pw, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(path.as_uri())
        n_figs = page.locator("div.plotly-graph-div").count()
        # 2 overlays, and each sweep's parallel coordinates, C plot, trials, importances.
        assert n_figs == 10
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot').length >= {n_figs}", timeout=60_000
        )
        assert page.locator(".js-plotly-plot .main-svg").count() >= n_figs
        # Two sweeps on one axis: a best-so-far line and the trials' markers each.
        assert page.locator("#overlay-trial .scatterlayer .trace").count() == 4
        assert page.locator("#overlay-time .scatterlayer .trace").count() == 4
        # Integer trial ticks, as drawn.
        ticks = page.locator("#overlay-trial .xtick text").all_text_contents()
        assert ticks and all(t.strip().isdigit() for t in ticks), ticks
        assert len(ticks) == len(set(ticks))
        # The log axis as drawn: decade ticks in the param's units.
        texts = set(page.locator("#s1-parallel .parcoords text").all_text_contents())
        assert "model.C (log)" in texts and texts & {"0.001", "0.01", "0.1", "1", "10", "100"}
        assert page.locator("#best").is_visible()
        assert errors == [] and failed == []
        top = tmp_path / "compare-sweeps-top.png"
        full = tmp_path / "compare-sweeps.png"
        page.screenshot(path=str(top))
        page.screenshot(path=str(full), full_page=True)
        for shot in (top, full):
            assert shot.stat().st_size > 10_000
            keep_artifact(shot)
    finally:
        browser.close()
        pw.stop()
