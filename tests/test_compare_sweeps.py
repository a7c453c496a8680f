"""``python -m runner.compare`` sweep against sweep, and the report that shows it.

Two real Optuna studies (TPE and random, 6 logreg/iris trials each) made with the real CLI
into one SQLite store, once per module; edge cases (two parents with one name, a grid
parent, known durations) are written with a plain ``MlflowClient`` into experiment ``edge``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from runner import compare
from runner.compare.ranking import fmt_param, fmt_value
from tests.helpers import sweeps_into_one_store
from tests.test_compare import FAST, _browser, _header, _rows, keep_artifact, watched_page

#: C on a log scale over five decades: the report's parallel coordinates get a log axis.
SPACE = "model.C=tag(log, interval(0.001, 100.0))"
STUDIES = {
    # TPE after 3 random startup trials (Optuna's default of 10 would make it random here).
    "tpe-iris": ("hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.n_startup_trials=3"),
    # Another seed: the same seed would draw TPE's startup trials again.
    "random-iris": ("hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1"),
}
T0 = 1_700_000_000_000  # the edge runs' clock (ms)


def _optuna(name: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    return (
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweeper.study_name={name}",
        *extra,
        "model=logreg",
        "dataset=iris",
        SPACE,
        *FAST,
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
    # Each study in its own launch directory (its own optuna.db), both at once.
    sweeps = {name: _optuna(name, extra) for name, extra in STUDIES.items()}
    uri, db, _ = sweeps_into_one_store(root, _template_db, sweeps)
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
        page, errors, failed = watched_page(browser, width=1300, height=1000)
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


# -- a stranger's names -------------------------------------------------------------------

#: Names anyone who can log a run may write: a tag with a script handler, a break out of an
#: attribute into a script, plotly's own markup (a link, bold), and entity text that must
#: stay text.
EVIL_IMG = "<img src=x onerror=alert(1)>"
EVIL_SCRIPT = '"><script>alert(2)</script>'
EVIL_MARKUP = '<a href="https://example.invalid/">link</a><b>bold</b>'
EVIL_ENTITY = "&lt;not a tag&gt;"
#: rich's markup, for the terminal tables: a closing tag that opens nothing, and a link.
EVIL_RICH = "[/b]x[link=https://example.invalid/]rich[/link]"
EVIL = (EVIL_IMG, EVIL_SCRIPT, EVIL_MARKUP, EVIL_ENTITY, EVIL_RICH)
#: Each hostile sweep: its study (and run) name and its sampler.
EVIL_SWEEPS = {EVIL_IMG: EVIL_MARKUP, EVIL_SCRIPT: EVIL_RICH}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> str:
    """Experiment ``hostile``: two Optuna-like sweeps whose every name is hostile."""
    import shutil

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("hostile") / "mlflow.db"
    shutil.copy(_template_db, db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = client.create_experiment("hostile")
    for k, (name, sampler) in enumerate(EVIL_SWEEPS.items()):
        p = client.create_run(
            exp,
            start_time=T0 + k,
            run_name=name,
            tags={"runner.kind": "sweep", "runner.sweeper": "optuna"},
        )
        params = {"study_name": name, "sampler": sampler, "pruner": EVIL_MARKUP}
        client.log_batch(p.info.run_id, params=[Param(a, b) for a, b in params.items()])
        for i, kind in enumerate(EVIL):
            run = client.create_run(
                exp,
                start_time=T0 + 1000 * i,
                run_name=f"{EVIL[(i + k) % len(EVIL)]} {i}",
                tags={
                    "mlflow.parentRunId": p.info.run_id,
                    "runner.kind": "job",
                    "runner.trial_number": str(i),
                    "runner.trial_state": "COMPLETE",
                },
            )
            child = {"objective": "val_accuracy", "direction": "maximize", "kind": kind}
            child["x"] = str(0.5 + i + k)
            acc = 0.5 + 0.1 * i + 0.01 * k
            # Two steps of val_loss: the learning curves' legend names the run too.
            curve = [Metric("val_loss", 1.0 / (s + 1), T0, s) for s in range(2)]
            client.log_batch(
                run.info.run_id,
                params=[Param(a, b) for a, b in child.items()],
                metrics=[Metric("val_accuracy", acc, T0, 0), *curve],
            )
            client.set_terminated(run.info.run_id, end_time=T0 + 1000 * i + 500)
        client.set_terminated(p.info.run_id, end_time=T0 + k + 65_000)
    return uri


def _hostile_report(uri: str, path: Path) -> str:
    argv = ["--tracking-uri", uri, "--experiment", "hostile", "--html", str(path)]
    for name in EVIL_SWEEPS:
        argv += ["--sweep", name]  # by study name: any text is a safe name
    assert compare.main(argv) == 0
    return path.read_text(encoding="utf-8")


def test_terminal_tables_of_hostile_sweeps_print_names_as_text(
    hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--tracking-uri", hostile, "--experiment", "hostile"]
    for name in EVIL_SWEEPS:
        argv += ["--sweep", name]
    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    for name in EVIL:  # the sweeps table (names, samplers) and the runs table (names, params)
        assert name in out, name
    assert "\x1b]8;" not in out  # no terminal hyperlink


class _Page(HTMLParser):
    """A page as a browser's parser reads it: its tags, its text, its scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in is None:
            self.text.append(data)


def _strings(value: Any) -> list[str]:
    """Every string in a figure's JSON (names, hover data, tick texts, titles)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _plotly(text: str) -> str:
    """``text`` as the report hands it to plotly.js, which decodes it back for display."""
    return html.escape(text, quote=False)


def test_report_of_hostile_sweeps_shows_their_names_as_text(hostile: str, tmp_path: Path) -> None:
    page = _hostile_report(hostile, tmp_path / "hostile.html")
    parsed = _Page()
    parsed.feed(page)
    # No name became markup: no image, no handler, no link out, no script of its own.
    assert [t for t, _ in parsed.tags if t in ("img", "svg", "iframe", "object")] == []
    handlers = [(t, a) for t, attrs in parsed.tags for a, _ in attrs if a.startswith("on")]
    assert handlers == []
    hrefs = [v for t, attrs in parsed.tags if t == "a" for a, v in attrs if a == "href"]
    assert hrefs and all(v is not None and v.startswith("#sweep-") for v in hrefs), hrefs
    assert [s for s in parsed.scripts if "alert(" in s and "Plotly.newPlot" not in s] == []
    # Each name reads as itself: the tables (sweeps, runs, params), the headings, the header.
    text = "".join(parsed.text)
    for name in EVIL:
        assert name in text, name
    for i, name in enumerate(EVIL_SWEEPS, 1):
        assert f"Sweep {i}: {name}" in text or f"Sweep {3 - i}: {name}" in text
    titles = [v for _, attrs in parsed.tags for a, v in attrs if a == "title"]
    assert titles  # the full values on hover: attributes that held together
    # The figures: plotly.js reads names as its own markup; each arrives escaped, whole.
    figs = _figures(page)
    # But the parallel coordinates, which draw their ticks as plain text (checked below).
    strings = [s for sid, fs in figs.items() if not sid.endswith("parallel") for f in fs
               for s in _strings(f)]  # fmt: skip
    for name in (n for n in EVIL if _plotly(n) != n):
        assert not [s for s in strings if name in s], name
    runs = {k: {f"{EVIL[(i + k) % len(EVIL)]} {i}" for i in range(len(EVIL))} for k in (0, 1)}
    for by in ("trial", "time"):
        (fig,) = figs[f"overlay-{by}"]
        legend = {t["name"] for t in fig["data"] if t.get("showlegend") is not False}
        assert legend == {_plotly(f"{n} ({s})") for n, s in EVIL_SWEEPS.items()}
        hover = {c[0] for t in fig["data"] for c in t["customdata"]}
        assert hover == {_plotly(n) for k in (0, 1) for n in runs[k]}
    escaped = [{_plotly(n) for n in runs[k]} for k in (0, 1)]
    for i in (1, 2):
        (trials,) = figs[f"s{i}-trials"]
        assert {c[0] for c in trials["data"][0]["customdata"]} in escaped
        (vs,) = figs[f"s{i}-vs-kind"]  # a categorical axis of hostile values
        assert sorted(vs["data"][0]["x"]) == sorted(_plotly(k) for k in EVIL)
        assert {c[0] for c in vs["data"][0]["customdata"]} in escaped
        assert sorted(c[1] for c in vs["data"][0]["customdata"]) == sorted(vs["data"][0]["x"])
        (par,) = figs[f"s{i}-parallel"]
        dims = {d["label"]: d for d in par["data"][0]["dimensions"]}
        assert sorted(dims["kind"]["ticktext"]) == sorted(EVIL)
        (curves,) = figs[f"s{i}-curves"]
        names = {t["name"].removesuffix(" val_loss") for t in curves["data"]}
        assert names in escaped


def test_report_of_hostile_sweeps_draws_their_names_in_chromium(
    hostile: str, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.html"
    _hostile_report(hostile, path)
    pw, browser = _browser()
    try:
        page, errors, failed = watched_page(browser, width=1300, height=1000)
        dialogs: list[str] = []  # an alert() that ran
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        n_figs = page.locator("div.plotly-graph-div").count()
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_figs}",
            timeout=60_000,
        )
        assert page.locator("img").count() == 0
        assert page.locator("svg a").count() == 0  # plotly made no link of a name
        # The legends and axes as drawn: each name as it is, markup and entities included.
        legend = set(page.locator("#overlay-trial .legendtext").all_text_contents())
        assert legend == {f"{n} ({s})" for n, s in EVIL_SWEEPS.items()}
        ticks = set(page.locator("#s1-vs-kind .xtick text").all_text_contents())
        assert ticks == set(EVIL), ticks
        texts = set(page.locator("#s1-parallel .parcoords text").all_text_contents())
        assert set(EVIL) <= texts, texts
        curves = page.locator("#s1-curves .legendtext").all_text_contents()
        assert curves and all(any(c.startswith(n) for n in EVIL) for c in curves), curves
        # The hover label of a run: its name, drawn as text.
        page.locator("#s1-vs-kind .scatterlayer .point").first.hover(force=True)
        label = page.locator("#s1-vs-kind .hoverlayer .hovertext")
        label.first.wait_for(timeout=30_000)
        shown = " ".join(label.all_text_contents())
        assert any(f"{n} " in shown for n in EVIL), shown
        assert page.locator("#sweeps-table").inner_text().count("<") >= 2
        assert dialogs == [] and errors == [] and failed == []
        shot = tmp_path / "compare-hostile.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_artifact(shot)
    finally:
        browser.close()
        pw.stop()
