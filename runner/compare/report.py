"""The HTML report of ``python -m runner.compare --html``: one self-contained file.

plotly.js is inlined once (``include_plotlyjs=True`` on the first figure), so the file
opens offline and needs no CDN. Sections: the ranked table, a parallel-coordinates plot of
the varying params against the objective, the objective against each varying param, the
objective over trial number, param importances (Optuna's evaluator on a study rebuilt from
the runs), and learning curves of the top runs where they logged step metrics.

plotly and optuna are imported here only, and this module only by ``--html``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.compare.ranking import Sort, finite_float, fmt_value, iso_time, objective_of

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = ["CURVE_RUNS", "param_importances", "write_html"]

log = logging.getLogger(__name__)

#: How many of the top runs get learning curves (one metric-history request per run and
#: curve metric, the only per-run requests of the command).
CURVE_RUNS = 5
#: Step metrics drawn as learning curves, in order of preference (the runner's contract).
_CURVE_METRICS = ("val_loss", "train_loss")
_CURVE_PREFIX = "boost_val_"
#: Categorical params with more levels than this are left out of the parallel coordinates.
_MAX_LEVELS = 50

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table.runs { border-collapse: collapse; font-size: 0.85em; }
table.runs th, table.runs td { border: 1px solid #ccc; padding: 2px 6px; }
table.runs td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.runs tr.best { background: #e8f5e9; } table.runs tr.FAILED { color: #b71c1c; }
.note { color: #666; font-size: 0.9em; }
"""


def _numeric(values: Sequence[str | None]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(finite_float(v) is not None for v in present)


def _is_int(values: Sequence[str]) -> bool:
    return all(float(v).is_integer() and "." not in v and "e" not in v.lower() for v in values)


def _log_scale(xs: Sequence[float]) -> bool:
    # Sweeps over C=0.01,1,100 or lr=1e-4..1e-1 read better on a log axis.
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100


def _scored(runs: Sequence[Run], metric: str) -> list[Run]:
    return [r for r in runs if finite_float(r.data.metrics.get(metric)) is not None]


def _trial_number(r: Run, index: int) -> int:
    for tag in (contract.TRIAL_NUMBER, "optuna.trial_number", contract.JOB_NUM):
        value = r.data.tags.get(tag)
        if value is not None and value.isdigit():
            return int(value)
    return index


# -- importances --------------------------------------------------------------------------


def param_importances(
    runs: Sequence[Run], params: Sequence[str], *, objective: str, direction: str
) -> dict[str, float]:
    """Param importances of ``objective``, by Optuna's fANOVA on a study rebuilt from runs.

    Each scored run becomes a COMPLETE trial (``optuna.trial.create_trial``); distributions
    are inferred from the values the runs took: ints and floats span their min..max (log
    scale when positive and spanning 100x), anything else is categorical. Params constant
    over the scored runs carry no information and are left out.

    Returns:
        ``{param: importance}``, largest first, summing to 1; empty when fewer than two
        runs or no varying param.
    """
    import optuna
    from optuna.distributions import (
        BaseDistribution,
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    scored = _scored(runs, objective)
    dists: dict[str, BaseDistribution] = {}
    for p in params:
        values = [r.data.params[p] for r in scored if p in r.data.params]
        if len(set(values)) < 2:
            continue
        if _numeric(values):
            xs = [float(v) for v in values]
            log_ = _log_scale(xs)
            if _is_int(values):
                dists[p] = IntDistribution(int(min(xs)), int(max(xs)), log=log_)
            else:
                dists[p] = FloatDistribution(min(xs), max(xs), log=log_)
        else:
            dists[p] = CategoricalDistribution(sorted(set(values)))
    if len(scored) < 2 or not dists:
        return {}
    # Quiet: the in-memory study's "created" INFO line means nothing to a report reader.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize" if direction == "minimize" else "maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for r in scored:
        trial_params: dict[str, Any] = {}
        for p, d in dists.items():
            if p not in r.data.params:
                continue
            v = r.data.params[p]
            if isinstance(d, IntDistribution):
                trial_params[p] = int(float(v))
            elif isinstance(d, FloatDistribution):
                trial_params[p] = float(v)
            else:
                trial_params[p] = v
        study.add_trial(
            optuna.trial.create_trial(
                params=trial_params,
                distributions={p: dists[p] for p in trial_params},
                value=float(r.data.metrics[objective]),
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


# -- figures ------------------------------------------------------------------------------


def _parallel(runs: Sequence[Run], params: Sequence[str], objective: str) -> Any:
    import plotly.graph_objects as go

    scored = _scored(runs, objective)
    dims = []
    for p in params:
        values = [r.data.params.get(p) for r in scored]
        if _numeric(values):
            dims.append(
                {"label": p, "values": [finite_float(v) if v is not None else None for v in values]}
            )
            continue
        levels = sorted({str(v) for v in values})
        if len(levels) > _MAX_LEVELS:
            continue
        index = {lv: i for i, lv in enumerate(levels)}
        dims.append(
            {
                "label": p,
                "values": [index[str(v)] for v in values],
                "tickvals": list(range(len(levels))),
                "ticktext": levels,
            }
        )
    ys = [float(r.data.metrics[objective]) for r in scored]
    dims.append({"label": objective, "values": ys})
    fig = go.Figure(
        go.Parcoords(
            line={"color": ys, "colorscale": "Viridis", "showscale": True}, dimensions=dims
        )
    )
    fig.update_layout(height=450, margin={"l": 80, "r": 80, "t": 60, "b": 40})
    return fig


def _versus(runs: Sequence[Run], param: str, objective: str) -> Any:
    import plotly.graph_objects as go

    scored = [r for r in _scored(runs, objective) if param in r.data.params]
    raw = [r.data.params[param] for r in scored]
    ys = [float(r.data.metrics[objective]) for r in scored]
    names = [r.info.run_name or r.info.run_id[:8] for r in scored]
    numeric = _numeric(raw)
    xs: list[Any] = [float(v) for v in raw] if numeric else raw
    fig = go.Figure(
        go.Scatter(x=xs, y=ys, mode="markers", text=names, marker={"size": 9, "opacity": 0.75})
    )
    fig.update_layout(
        title=f"{objective} vs {param}",
        xaxis_title=param,
        yaxis_title=objective,
        height=350,
        margin={"t": 50, "b": 40},
    )
    if numeric and _log_scale(xs):
        fig.update_xaxes(type="log")
    if not numeric:
        fig.update_xaxes(type="category", categoryorder="category ascending")
    return fig


def _over_trials(runs: Sequence[Run], objective: str, direction: str) -> Any:
    import plotly.graph_objects as go

    by_time = sorted(_scored(runs, objective), key=lambda r: r.info.start_time or 0)
    xs = [_trial_number(r, i) for i, r in enumerate(by_time)]
    if len(set(xs)) < len(xs):  # runs of several sweeps: number them by start time
        xs = list(range(len(by_time)))
    pairs = sorted(zip(xs, by_time, strict=True), key=lambda t: t[0])
    ys = [float(r.data.metrics[objective]) for _, r in pairs]
    best: list[float] = []
    for y in ys:
        prev = best[-1] if best else y
        best.append(max(prev, y) if direction == "maximize" else min(prev, y))
    xs = [x for x, _ in pairs]
    names = [r.info.run_name or r.info.run_id[:8] for _, r in pairs]
    fig = go.Figure()
    fig.add_scatter(x=xs, y=ys, mode="markers", name=objective, text=names)
    fig.add_scatter(x=xs, y=best, mode="lines", name="best so far", line={"shape": "hv"})
    fig.update_layout(
        title=f"{objective} by trial number",
        xaxis_title="trial (job) number",
        yaxis_title=objective,
        height=350,
    )
    return fig


def _importance_fig(importances: dict[str, float], objective: str) -> Any:
    import plotly.graph_objects as go

    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h"))
    fig.update_layout(
        title=f"Param importances for {objective} (fANOVA)",
        xaxis_title="importance",
        height=150 + 30 * len(items),
        margin={"l": 160},
    )
    return fig


def _curve_keys(r: Run) -> list[str]:
    keys = [k for k in _CURVE_METRICS if k in r.data.metrics]
    return keys + sorted(k for k in r.data.metrics if k.startswith(_CURVE_PREFIX))[:1]


def _curves(client: Any, runs: Sequence[Run]) -> Any | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    drawn = 0
    # The top runs among those that logged a curve metric (its latest value is in the
    # search result, so this costs no request); only their histories are fetched.
    with_curves = [r for r in runs if _curve_keys(r)][:CURVE_RUNS]
    for r in with_curves:
        keys = _curve_keys(r)
        name = r.info.run_name or r.info.run_id[:8]
        for key in keys:
            history = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            if len(history) < 2:
                continue
            fig.add_scatter(
                x=[m.step for m in history],
                y=[m.value for m in history],
                mode="lines",
                name=f"{name} {key}",
                line={"dash": "dot" if key.startswith("train_") else "solid"},
            )
            drawn += 1
    if not drawn:
        return None
    fig.update_layout(
        title=f"Learning curves of the top {len(with_curves)} runs with step metrics",
        xaxis_title="step (epoch / boosting round)",
        yaxis_title="value",
        height=420,
    )
    return fig


# -- the page -----------------------------------------------------------------------------


def _table(runs: Sequence[Run], params: Sequence[str], metrics: Sequence[str]) -> str:
    esc = html.escape
    head = ["#", "run", "run_id", "status", "started", *params, *metrics]
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(runs, 1):
        cls = [r.info.status]
        if r.data.tags.get(contract.BEST) == "true":
            cls.append("best")
        cells = [
            f'<td class="num">{i}</td>',
            f"<td>{esc(r.info.run_name or '')}</td>",
            f"<td><code>{esc(r.info.run_id)}</code></td>",
            f"<td>{esc(r.info.status)}</td>",
            f"<td>{esc(iso_time(r.info.start_time))}</td>",
            *(f"<td>{esc(r.data.params.get(p, '-'))}</td>" for p in params),
            *(f'<td class="num">{fmt_value(r.data.metrics.get(m))}</td>' for m in metrics),
        ]
        rows.append(f'<tr class="{" ".join(cls)}">' + "".join(cells) + "</tr>")
    return '<table class="runs" id="ranked">' + "".join(rows) + "</table>"


def write_html(
    path: Path,
    *,
    client: Any,
    runs: Sequence[Run],
    params: Sequence[str],
    metrics: Sequence[str],
    sort: Sort | None,
    top: int | None,
    title: str,
) -> None:
    """Write the report for ``runs`` (ranked, best first) to ``path``.

    Args:
        path: The HTML file to write.
        client: An ``MlflowClient`` (for the top runs' metric histories).
        runs: The selection, in rank order.
        params: The varying params (plot axes and table columns).
        metrics: The table's metric columns.
        sort: The ranking; its metric is the plots' objective when it is a metric.
        top: Rows of the ranked table (all when None); the plots use every run.
        title: The page title.
    """
    objective, direction = objective_of(runs)
    if sort is not None and sort.kind == "metrics":
        objective, direction = sort.key, sort.direction
    sections: list[tuple[str, str, Any]] = []  # (id, heading, figure or html)
    shown = list(runs[:top] if top else runs)
    summary = (
        f"{len(runs)} runs ("
        + ", ".join(
            f"{s}: {n}"
            for s, n in sorted(
                {
                    s: sum(r.info.status == s for r in runs) for s in {r.info.status for r in runs}
                }.items()
            )
        )
        + ")"
    )
    if sort is not None:
        summary += f", ranked by {sort.label} ({sort.direction})"
    sections.append(("ranked", "Ranked runs", _table(shown, params, metrics)))
    notes: list[str] = []
    if objective and _scored(runs, objective):
        if params:
            sections.append(("parallel", "Params vs objective", _parallel(runs, params, objective)))
            for p in params:
                sections.append((f"vs-{p}", f"{objective} vs {p}", _versus(runs, p, objective)))
        sections.append(
            ("trials", "Objective over trials", _over_trials(runs, objective, direction or ""))
        )
        try:
            imp = param_importances(
                runs, params, objective=objective, direction=direction or "maximize"
            )
        except Exception as e:  # the report is still useful without them
            log.warning("param importances could not be computed: %s", e)
            notes.append(f"Param importances could not be computed: {e}")
            imp = {}
        if imp:
            sections.append(("importances", "Param importances", _importance_fig(imp, objective)))
    else:
        notes.append("No run has an objective metric to plot.")
    curves = _curves(client, runs)
    if curves is not None:
        sections.append(("curves", "Learning curves", curves))
    body: list[str] = []
    plotlyjs_done = False
    for sid, heading, content in sections:
        body.append(f'<section id="{html.escape(sid)}"><h2>{html.escape(heading)}</h2>')
        if isinstance(content, str):
            body.append(content)
        else:
            # plotly.js (~4 MB) goes inline once, with the first figure: works offline.
            body.append(
                content.to_html(
                    full_html=False,
                    include_plotlyjs=not plotlyjs_done,
                    config={"displaylogo": False},
                )
            )
            plotlyjs_done = True
        body.append("</section>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
        + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
        + "".join(body)
        + "</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
