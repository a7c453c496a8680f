"""The HTML report of ``python -m runner.compare --html``: one self-contained file.

plotly.js is inlined once (``include_plotlyjs=True`` on the first figure), so the file
opens offline and needs no CDN. A header names the best run and the counts. Sections: the
ranked table, a parallel-coordinates plot of the varying params against the objective, the
objective against each varying param, the objective over trial number, param importances
(Optuna's evaluator on a study rebuilt from the runs), and learning curves of the top runs
where they logged step metrics. With two or more sweeps: first a table of the sweeps and
their best-so-far curves overlaid (by trial number, by wall time), then those sections once
per sweep.

Tables round (4 significant digits); the full value is the cell's hover text, and the
figures' hover shows it too. Log-scaled params (an Optuna parent's ``tag(log, ...)``, or
positive values spanning two decades) get log axes, in the parallel coordinates as well.

plotly and optuna are imported here only, and this module only by ``--html``.
"""

from __future__ import annotations

import html
import logging
import math
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.compare.ranking import (
    Sort,
    finite_float,
    fmt_param,
    fmt_value,
    iso_time,
    objective_of,
    order_runs,
    varying_params,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from runner.compare.sweeps import SweepSummary

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
table.runs th { background: #f3f4f6; text-align: left; }
table.runs tr.best { background: #e8f5e9; } table.runs tr.FAILED { color: #b71c1c; }
table.runs tr.top { font-weight: 600; } table.runs td.time { white-space: nowrap; }
table.runs td[title], .best-run [title] { cursor: help; }
h3 { font-size: 1.0em; margin-top: 1.5em; }
section.sweep { border-top: 2px solid #ccc; margin-top: 2.5em; }
header .counts { margin: 0.3em 0 0.8em; }
.best-run { display: inline-block; background: #e8f5e9; border: 1px solid #66bb6a;
  border-radius: 6px; padding: 0.5em 0.9em; }
.best-run .label { color: #2e7d32; font-weight: 700; text-transform: uppercase;
  font-size: 0.8em; letter-spacing: 0.05em; }
.note { color: #666; font-size: 0.9em; }
"""


def _plain(text: str) -> str:
    """``text`` from the store (a run, sweep or sampler name, a param's value) for plotly.

    plotly.js reads trace names, hover labels and tick texts as its own subset of HTML
    (``<b>``, ``<br>``, ``<span style=...>``, ``<a href=...>``): a stranger's run name could
    restyle the legend or put a link in it. Escaped, plotly decodes the entities again and
    draws the text as it is (it decodes ``&amp;``, ``&lt;``, ``&gt;`` but not ``&quot;``,
    hence no quote escaping).
    """
    return html.escape(text, quote=False)


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
    runs: Sequence[Run],
    params: Sequence[str],
    *,
    objective: str,
    direction: str,
    log_params: Collection[str] = (),
) -> dict[str, float]:
    """Param importances of ``objective``, by Optuna's fANOVA on a study rebuilt from runs.

    Each scored run becomes a COMPLETE trial (``optuna.trial.create_trial``); distributions
    are inferred from the values the runs took: ints and floats span their min..max (log
    scale when in ``log_params`` or positive and spanning 100x), anything else is
    categorical. Params constant
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
            log_ = min(xs) > 0 and (p in log_params or _log_scale(xs))
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

#: No figure carries a plotly title: the section's heading names it (a title printed twice
#: is noise). Small top margins for the same reason.
_MARGIN = {"t": 20, "b": 50, "l": 70, "r": 30}


def _log_axis(p: str, xs: Sequence[float], log_params: Collection[str]) -> bool:
    """Whether param ``p`` goes on a log axis: searched on a log scale (an Optuna parent's
    ``tag(log, ...)``), or all positive and spanning at least two decades."""
    if not xs or min(xs) <= 0:
        return False
    return p in log_params or _log_scale(xs)


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[float], list[str]]:
    """A decade-aligned range in log10 units, its tick positions and their texts."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b = a + 1
    mults = (1, 2, 5) if b - a <= 3 else (1,)
    vals = [k + math.log10(m) for k in range(a, b + 1) for m in mults]
    vals = [v for v in vals if v <= b + 1e-9]
    return [float(a), float(b)], vals, [f"{10**v:.3g}" for v in vals]


def _lin_ticks(lo: float, hi: float) -> tuple[list[float], list[float], list[str]]:
    """A linear range, about five round tick positions and their texts."""
    if hi <= lo:
        return [lo - 0.5, lo + 0.5], [lo], [f"{lo:.4g}"]
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    vals = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [lo, hi], vals, [f"{v:.4g}" for v in vals]


def _with_missing(dim: dict[str, Any], xs: Sequence[float | None]) -> dict[str, Any]:
    """Runs without the param (an MLP run has no ``model.C``) sit on a tick ``-`` below
    the axis's range: parcoords draws a missing value nowhere in particular."""
    if all(x is not None for x in xs):
        return dim
    if "range" not in dim:
        present = [x for x in xs if x is not None]
        dim["range"], dim["tickvals"], dim["ticktext"] = _lin_ticks(min(present), max(present))
    lo, hi = dim["range"]
    low = lo - 0.12 * ((hi - lo) or 1.0)
    dim["values"] = [low if x is None else x for x in dim["values"]]
    dim["range"] = [low, hi]
    dim["tickvals"] = [low, *dim["tickvals"]]
    dim["ticktext"] = ["-", *dim["ticktext"]]
    return dim


def _parallel(
    runs: Sequence[Run], params: Sequence[str], objective: str, log_params: Collection[str]
) -> Any:
    import plotly.graph_objects as go

    scored = _scored(runs, objective)
    dims: list[dict[str, Any]] = []
    for p in params:
        values = [r.data.params.get(p) for r in scored]
        if _numeric(values):
            xs = [finite_float(v) for v in values]
            present = [x for x in xs if x is not None]
            if _log_axis(p, present, log_params):
                # Parcoords has no log axis type: log10 of the values, ticks in the
                # param's own units (0.001, 0.01, ...).
                rng, tickvals, ticktext = _log_ticks(min(present), max(present))
                dim: dict[str, Any] = {
                    "label": f"{p} (log)",
                    "values": [math.log10(x) if x is not None else None for x in xs],
                    "range": rng,
                    "tickvals": tickvals,
                    "ticktext": ticktext,
                }
            else:
                dim = {"label": p, "values": xs}
            dims.append(_with_missing(dim, xs))
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
                # Parcoords draws its ticks as plain text (no markup): not escaped.
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


def _hover(name: str, x_label: str, y_label: str) -> str:
    del name
    return (
        "<b>%{customdata[0]}</b><br>"
        f"{_plain(x_label)} = %{{customdata[1]}}<br>"
        f"{_plain(y_label)} = %{{customdata[2]}}<extra></extra>"
    )


def _versus(runs: Sequence[Run], param: str, objective: str, log_params: Collection[str]) -> Any:
    import plotly.graph_objects as go

    scored = [r for r in _scored(runs, objective) if param in r.data.params]
    raw = [r.data.params[param] for r in scored]
    ys = [float(r.data.metrics[objective]) for r in scored]
    names = [_plain(r.info.run_name or r.info.run_id[:8]) for r in scored]
    numeric = _numeric(raw)
    xs: list[Any] = [float(v) for v in raw] if numeric else [_plain(v) for v in raw]
    # Full precision on hover; the axes and tables round.
    custom = [[n, _plain(x), repr(y)] for n, x, y in zip(names, raw, ys, strict=True)]
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            customdata=custom,
            hovertemplate=_hover("", param, objective),
            marker={"size": 9, "opacity": 0.75},
        )
    )
    fig.update_layout(xaxis_title=param, yaxis_title=objective, height=350, margin=_MARGIN)
    if numeric and _log_axis(param, xs, log_params):
        fig.update_xaxes(type="log")
    if not numeric:
        fig.update_xaxes(type="category", categoryorder="category ascending")
    return fig


def _int_ticks(fig: Any, xs: Sequence[int]) -> None:
    """Integer ticks on the x axis (trial numbers): never 0.5, never a repeated label."""
    if not xs:
        return
    span = max(xs) - min(xs)
    steps = (m * 10**k for k in range(12) for m in (1, 2, 5))  # 1, 2, 5, 10, 20, ...
    step = next(s for s in steps if span / s <= 12)
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=step, tickformat="d")


def _best_so_far(ys: Sequence[float], direction: str) -> list[float]:
    best: list[float] = []
    for y in ys:
        prev = best[-1] if best else y
        best.append(max(prev, y) if direction == "maximize" else min(prev, y))
    return best


def _numbered(runs: Sequence[Run], objective: str) -> list[tuple[int, Run]]:
    """The scored runs with their trial (job) numbers, in number order."""
    by_time = sorted(_scored(runs, objective), key=lambda r: r.info.start_time or 0)
    xs = [_trial_number(r, i) for i, r in enumerate(by_time)]
    if len(set(xs)) < len(xs):  # runs of several sweeps: number them by start time
        xs = list(range(len(by_time)))
    return sorted(zip(xs, by_time, strict=True), key=lambda t: t[0])


def _over_trials(runs: Sequence[Run], objective: str, direction: str) -> Any:
    import plotly.graph_objects as go

    pairs = _numbered(runs, objective)
    ys = [float(r.data.metrics[objective]) for _, r in pairs]
    best = _best_so_far(ys, direction)
    xs = [x for x, _ in pairs]
    custom = [
        [_plain(r.info.run_name or r.info.run_id[:8]), x, repr(y)]
        for (x, r), y in zip(pairs, ys, strict=True)
    ]
    fig = go.Figure()
    fig.add_scatter(
        x=xs,
        y=ys,
        mode="markers",
        name=objective,
        customdata=custom,
        hovertemplate=_hover("", "trial", objective),
    )
    fig.add_scatter(x=xs, y=best, mode="lines", name="best so far", line={"shape": "hv"})
    fig.update_layout(
        xaxis_title="trial (job) number", yaxis_title=objective, height=350, margin=_MARGIN
    )
    _int_ticks(fig, xs)
    return fig


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def _overlay(
    sweeps: Sequence[SweepSummary], objective: str, direction: str, *, by: str
) -> Any | None:
    """Each sweep's best-so-far curve on one axis, ``by`` ``trial`` number or wall ``time``
    (seconds since the sweep's parent started, so sweeps run on different days overlay)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    drawn = 0
    all_x: list[int] = []
    for i, s in enumerate(sweeps):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        # Sweeps that found the same values draw the same line: dashes keep both visible.
        dash = _DASHES[i % len(_DASHES)]
        if by == "trial":
            pairs: list[tuple[Any, Run]] = list(_numbered(s.runs, objective))
            all_x += [int(x) for x, _ in pairs]
        else:
            scored = _scored(s.runs, objective)
            t0 = s.parent.info.start_time or min(
                (r.info.start_time or 0 for r in scored), default=0
            )
            done = [(((r.info.end_time or r.info.start_time or t0) - t0) / 1000, r) for r in scored]
            pairs = sorted(done, key=lambda t: t[0])
        if not pairs:
            continue
        xs = [x for x, _ in pairs]
        ys = [float(r.data.metrics[objective]) for _, r in pairs]
        best = _best_so_far(ys, direction)
        label = _plain(f"{s.name} ({s.sampler})")
        names = [_plain(r.info.run_name or r.info.run_id[:8]) for _, r in pairs]
        x_text = [str(x) if by == "trial" else f"{x:.1f}s" for x in xs]
        fig.add_scatter(
            x=xs,
            y=best,
            mode="lines",
            name=label,
            legendgroup=label,
            line={"shape": "hv", "color": color, "width": 2.5, "dash": dash},
            customdata=[[n, t, repr(b)] for n, t, b in zip(names, x_text, best, strict=True)],
            hovertemplate=_hover("", by, f"best {objective}"),
        )
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="markers",
            name=f"{label} trials",
            legendgroup=label,
            showlegend=False,
            marker={"color": color, "opacity": 0.4, "size": 7},
            customdata=[[n, t, repr(y)] for n, t, y in zip(names, x_text, ys, strict=True)],
            hovertemplate=_hover("", by, objective),
        )
        drawn += 1
    if not drawn:
        return None
    fig.update_layout(
        xaxis_title="trial number" if by == "trial" else "wall time since the sweep started (s)",
        yaxis_title=f"best {objective} so far",
        height=380,
        margin=_MARGIN,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
    )
    if by == "trial":
        _int_ticks(fig, all_x)
    else:
        fig.update_xaxes(rangemode="tozero")
    return fig


def _importance_fig(importances: dict[str, float]) -> Any:
    import plotly.graph_objects as go

    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items],
            y=[k for k, _ in items],
            orientation="h",
            text=[f"{v:.2f}" for _, v in items],
            textposition="auto",
            hovertemplate="%{y}: %{x}<extra></extra>",
            # One param: a slim bar, not a slab filling the plot.
            width=0.5 if len(items) == 1 else None,
        )
    )
    fig.update_layout(
        xaxis_title="share of the objective's variance (fANOVA)",
        height=max(200, 110 + 36 * len(items)),
        margin={**_MARGIN, "l": 20},
    )
    fig.update_xaxes(range=[0, 1.05])
    fig.update_yaxes(automargin=True)
    return fig


def _curve_keys(r: Run) -> list[str]:
    keys = [k for k in _CURVE_METRICS if k in r.data.metrics]
    return keys + sorted(k for k in r.data.metrics if k.startswith(_CURVE_PREFIX))[:1]


def _curves(client: Any, runs: Sequence[Run]) -> tuple[Any, int] | None:
    import plotly.graph_objects as go

    fig = go.Figure()
    drawn = 0
    steps: list[int] = []
    # The top runs among those that logged a curve metric (its latest value is in the
    # search result, so this costs no request); only their histories are fetched.
    with_curves = [r for r in runs if _curve_keys(r)][:CURVE_RUNS]
    for r in with_curves:
        keys = _curve_keys(r)
        name = _plain(r.info.run_name or r.info.run_id[:8])
        for key in keys:
            history = sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)
            if len(history) < 2:
                continue
            steps += [int(m.step) for m in history]
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
        xaxis_title="step (epoch / boosting round)", yaxis_title="value", height=420, margin=_MARGIN
    )
    _int_ticks(fig, steps)  # epochs and boosting rounds are whole numbers
    return fig, len(with_curves)


# -- the page -----------------------------------------------------------------------------


def _num_cell(x: float | None) -> str:
    """A rounded number, its full precision on hover (the ``title``)."""
    full = f' title="{html.escape(repr(x))}"' if x is not None else ""
    return f'<td class="num"{full}>{html.escape(fmt_value(x))}</td>'


def _param_cell(text: str | None) -> str:
    shown = fmt_param(text)
    full = f' title="{html.escape(text)}"' if text is not None and text != shown else ""
    return f"<td{full}>{html.escape(shown)}</td>"


def _table(
    runs: Sequence[Run],
    params: Sequence[str],
    metrics: Sequence[str],
    *,
    table_id: str = "ranked",
    sweep_of: dict[str, str] | None = None,
) -> str:
    esc = html.escape
    sweep_col = ["sweep"] if sweep_of is not None else []
    head = ["#", "run", *sweep_col, "run_id", "status", "started", *params, *metrics]
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(runs, 1):
        cls = [r.info.status]
        if r.data.tags.get(contract.BEST) == "true":
            cls.append("best")
        if i == 1:
            cls.append("top")
        sweep = [f"<td>{esc(sweep_of.get(r.info.run_id, ''))}</td>"] if sweep_of is not None else []
        cells = [
            f'<td class="num">{i}</td>',
            f"<td>{esc(r.info.run_name or '')}</td>",
            *sweep,
            f'<td><code title="{esc(r.info.run_id)}">{esc(r.info.run_id[:8])}</code></td>',
            f"<td>{esc(r.info.status)}</td>",
            f'<td class="time">{esc(iso_time(r.info.start_time)[:19].replace("T", " "))}</td>',
            *(_param_cell(r.data.params.get(p)) for p in params),
            *(_num_cell(finite_float(r.data.metrics.get(m))) for m in metrics),
        ]
        rows.append(f'<tr class="{" ".join(cls)}">' + "".join(cells) + "</tr>")
    return f'<table class="runs" id="{esc(table_id)}">' + "".join(rows) + "</table>"


def _sweeps_table(sweeps: Sequence[SweepSummary], sort: Sort | None) -> str:
    esc = html.escape
    best_head = f"best {sort.key}" if sort is not None and sort.kind == "metrics" else "best"
    head = ["#", "sweep", "run_id", "sampler", "pruner", "trials", best_head, "best params"]
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in [*head, "duration"]) + "</tr>"]
    for i, s in enumerate(sweeps, 1):
        full = ", ".join(f"{k}={v}" for k, v in s.best_params.items())
        cells = [
            f'<td class="num">{i}</td>',
            f'<td><a href="#sweep-{i}">{esc(s.name)}</a></td>',
            f'<td><code title="{esc(s.run_id)}">{esc(s.run_id[:8])}</code></td>',
            f"<td>{esc(s.sampler)}</td>",
            f"<td>{esc(s.pruner)}</td>",
            f"<td>{esc(s.trials)}</td>",
            _num_cell(s.best_value),
            f'<td title="{esc(full)}">{esc(s.params_text)}</td>',
            f'<td class="num">{esc(s.duration)}</td>',
        ]
        cls = ' class="top"' if i == 1 and s.best_value is not None else ""
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return '<table class="runs" id="sweeps-table">' + "".join(rows) + "</table>"


def _counts(runs: Sequence[Run]) -> str:
    by_status = Counter(r.info.status for r in runs)
    return ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))


def _header(
    title: str,
    runs: Sequence[Run],
    params: Sequence[str],
    sort: Sort | None,
    sweeps: Sequence[SweepSummary],
) -> str:
    """The page's head: the title, the counts, and the best run, highlighted."""
    esc = html.escape
    counts = f"<b>{len(runs)}</b> runs" + (f" ({esc(_counts(runs))})" if runs else "")
    if len(sweeps) > 1:
        counts += f" in <b>{len(sweeps)}</b> sweeps"
    if sort is not None:
        counts += f", ranked by <code>{esc(sort.label)}</code> ({esc(sort.direction)})"
    out = [f"<header><h1>{esc(title)}</h1>", f'<p class="counts">{counts}</p>']
    best = runs[0] if runs and sort is not None and sort.kind == "metrics" else None
    value = finite_float(best.data.metrics.get(sort.key)) if best and sort else None
    if best is not None and sort is not None and value is not None:
        sweep = next((s for s in sweeps if best in s.runs), None) if len(sweeps) > 1 else None
        bits = [
            f'<span class="label">Best run</span> <b>{esc(best.info.run_name or "")}</b> '
            f"<code>{esc(best.info.run_id)}</code>",
            f'{esc(sort.key)} = <b title="{esc(repr(value))}">{esc(fmt_value(value))}</b>',
        ]
        shown = [
            f'<span title="{esc(v)}">{esc(p)}={esc(fmt_param(v))}</span>'
            for p in params
            if (v := best.data.params.get(p)) is not None
        ]
        if shown:
            bits.append(", ".join(shown))
        if sweep is not None:
            bits.append(f"sweep {esc(sweep.name)} ({esc(sweep.sampler)})")
        out.append('<div class="best-run" id="best">' + " · ".join(bits) + "</div>")
    out.append("</header>")
    return "".join(out)


#: A section: its id, its heading, its heading level, a figure or HTML.
_Section = tuple[str, str, int, Any]


def _one(
    client: Any,
    runs: Sequence[Run],
    params: Sequence[str],
    metrics: Sequence[str],
    *,
    top: int | None,
    objective: str | None,
    direction: str | None,
    log_params: Collection[str],
    prefix: str = "",
    level: int = 2,
) -> tuple[list[_Section], list[str]]:
    """What a report of one selection shows: the ranked table and the plots."""
    sections: list[_Section] = []
    notes: list[str] = []
    shown = list(runs[:top] if top else runs)
    sections.append(
        (
            f"{prefix}ranked",
            "Ranked runs",
            level,
            _table(shown, params, metrics, table_id=f"{prefix}ranked"),
        )
    )
    if objective and _scored(runs, objective):
        if params:
            sections.append(
                (
                    f"{prefix}parallel",
                    f"Params vs {objective}",
                    level,
                    _parallel(runs, params, objective, log_params),
                )
            )
            for p in params:
                sections.append(
                    (
                        f"{prefix}vs-{p}",
                        f"{objective} vs {p}",
                        level,
                        _versus(runs, p, objective, log_params),
                    )
                )
        sections.append(
            (
                f"{prefix}trials",
                f"{objective} by trial number",
                level,
                _over_trials(runs, objective, direction or ""),
            )
        )
        try:
            imp = param_importances(
                runs,
                params,
                objective=objective,
                direction=direction or "maximize",
                log_params=log_params,
            )
        except Exception as e:  # the report is still useful without them
            log.warning("param importances could not be computed: %s", e)
            notes.append(f"Param importances could not be computed: {e}")
            imp = {}
        if imp:
            heading = f"Param importances for {objective} (fANOVA)"
            fig = _importance_fig(imp)
            if len(imp) == 1:
                only = html.escape(next(iter(imp)))
                note = (
                    f'<p class="note">Only {only} varies among the scored runs: it accounts '
                    "for all the variance the params explain, by construction.</p>"
                )
                sections.append((f"{prefix}importances", heading, level, (note, fig)))
            else:
                sections.append((f"{prefix}importances", heading, level, fig))
    else:
        notes.append("No run has an objective metric to plot.")
    curves = _curves(client, runs)
    if curves is not None:
        fig, n = curves
        heading = f"Learning curves of the top {n} runs with step metrics"
        sections.append((f"{prefix}curves", heading, level, fig))
    return sections, notes


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
    sweeps: Sequence[SweepSummary] = (),
    log_params: Collection[str] = (),
) -> None:
    """Write the report for ``runs`` (ranked, best first) to ``path``.

    Args:
        path: The HTML file to write.
        client: An ``MlflowClient`` (for the top runs' metric histories).
        runs: The selection, in rank order.
        params: The varying params (plot axes and table columns).
        metrics: The table's metric columns.
        sort: The ranking; its metric is the plots' objective when it is a metric.
        top: Rows of the ranked tables (all when None); the plots use every run.
        title: The page title.
        sweeps: With two or more, the sweeps compared (best first): a table of sweeps,
            their best-so-far curves overlaid by trial number and by wall time, and each
            sweep's own section.
        log_params: Params searched on a log scale (log axes); params all positive and
            spanning two decades or more get one anyway.
    """
    objective, direction = objective_of(runs)
    if sort is not None and sort.kind == "metrics":
        objective, direction = sort.key, sort.direction
    sections: list[_Section] = []
    notes: list[str] = []
    if len(sweeps) > 1:
        sections.append(("sweeps", "Sweeps", 2, _sweeps_table(sweeps, sort)))
        if objective:
            for by, heading in (("trial", "by trial number"), ("time", "by wall time")):
                fig = _overlay(sweeps, objective, direction or "maximize", by=by)
                if fig is not None:
                    sections.append(
                        (f"overlay-{by}", f"Best {objective} so far, {heading}", 2, fig)
                    )
        sweep_of = {r.info.run_id: s.name for s in sweeps for r in s.runs}
        shown = list(runs[:top] if top else runs)
        sections.append(
            (
                "ranked",
                "Ranked runs of every sweep",
                2,
                _table(shown, params, metrics, sweep_of=sweep_of),
            )
        )
        for i, s in enumerate(sweeps, 1):
            s_runs = order_runs(s.runs, sort)
            s_params = varying_params(s.runs)
            intro = (
                f'<p class="counts">{html.escape(s.sampler)} sampler, pruner '
                f"{html.escape(s.pruner)}; trials: {html.escape(s.trials)}; "
                f"{html.escape(s.duration)}; parent run <code>{html.escape(s.run_id)}</code></p>"
            )
            inner, inner_notes = _one(
                client,
                s_runs,
                s_params,
                metrics,
                top=top,
                objective=objective,
                direction=direction,
                log_params={*log_params, *s.log_params},
                prefix=f"s{i}-",
                level=3,
            )
            intro += "".join(f'<p class="note">{html.escape(n)}</p>' for n in inner_notes)
            sections.append((f"sweep-{i}", f"Sweep {i}: {s.name}", 2, intro))
            sections += inner
    else:
        logged = set(log_params)
        for s in sweeps:
            logged |= s.log_params
        sections, notes = _one(
            client,
            runs,
            params,
            metrics,
            top=top,
            objective=objective,
            direction=direction,
            log_params=logged,
        )
    body: list[str] = []
    plotlyjs_done = False
    for sid, heading, level, content in sections:
        cls = ' class="sweep"' if sid.startswith("sweep-") else ""
        body.append(f'<section id="{html.escape(sid)}"{cls}>')
        body.append(f"<h{level}>{html.escape(heading)}</h{level}>")
        parts = content if isinstance(content, tuple) else (content,)
        for part in parts:
            if isinstance(part, str):
                body.append(part)
                continue
            # plotly.js (~4 MB) goes inline once, with the first figure: works offline.
            body.append(
                part.to_html(
                    full_html=False,
                    include_plotlyjs=not plotlyjs_done,
                    config={"displaylogo": False, "responsive": True},
                )
            )
            plotlyjs_done = True
        body.append("</section>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + _header(title, runs, params, sort, sweeps)
        + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
        + "".join(body)
        + "</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
