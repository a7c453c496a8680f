"""What replay checks around the run: warnings before it, the metric comparison after it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.tracking.params import flatten
from runner.tracking.provenance import Provenance
from runner.tracking.redact import REDACTED

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "MetricRow",
    "compare_metrics",
    "dataset_warnings",
    "format_table",
    "input_digests",
    "is_timing",
    "logged_digest",
    "provenance_warnings",
    "redacted_keys",
]


def _short(commit: str) -> str:
    return commit[:12]


def provenance_warnings(tags: Mapping[str, str], now: Provenance) -> list[str]:
    """What can make a replay differ from its source: code, Python, package versions.

    Args:
        tags: The source run's tags (``runner.git.*``, ``runner.python``, ``runner.pkg.*``).
        now: The provenance of the code that will run the replay.
    """
    out: list[str] = []
    then = tags.get(contract.GIT_COMMIT)
    if then and now.git_commit and then != now.git_commit:
        out.append(
            f"the source run was logged at commit {_short(then)}, the code here is at "
            f"{_short(now.git_commit)}: results may differ (`git checkout {_short(then)}` "
            "replays the same code)."
        )
    elif then and not now.git_commit:
        out.append(
            f"the source run was logged at commit {_short(then)}, but the launch directory is "
            "not in a git repository now, so the code cannot be compared."
        )
    elif not then:
        out.append("the source run recorded no git commit, so its code cannot be compared.")
    if tags.get(contract.GIT_DIRTY) == "true":
        out.append(
            "the source run's working tree had uncommitted changes (its "
            "provenance/git_diff.patch artifact holds them); a replay runs without them."
        )
    if now.git_dirty:
        out.append(
            "the working tree here has uncommitted changes (git status); they run in the replay."
        )
    py = tags.get(contract.PYTHON)
    if py and py != now.python:
        out.append(f"Python differs: {py} then, {now.python} now.")
    then_pkgs = {
        k[len(contract.PKG_PREFIX) :]: v
        for k, v in tags.items()
        if k.startswith(contract.PKG_PREFIX)
    }
    for name in sorted(set(then_pkgs) | set(now.packages)):
        a, b = then_pkgs.get(name), now.packages.get(name)
        if a != b:
            out.append(
                f"package {name} differs: {a or 'not installed'} then, {b or 'not installed'} now."
            )
    return out


def input_digests(run: Any) -> dict[str, str]:
    """``context -> digest``: the runner's data digest as the run's MLflow dataset inputs
    record it (``mlflow.log_input``, in each input's profile), e.g. ``{"training": ...}``."""
    import json

    from runner.tracking.inputs import CONTEXT_TAG, PROFILE_DIGEST

    out: dict[str, str] = {}
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    for item in inputs:
        context = next((t.value for t in item.tags if t.key == CONTEXT_TAG), "")
        try:
            profile = json.loads(item.dataset.profile or "{}")
        except ValueError:  # a hostile or foreign profile: not ours
            continue
        digest = profile.get(PROFILE_DIGEST) if isinstance(profile, dict) else None
        if isinstance(digest, str) and digest:
            out[str(context)] = digest
    return out


def logged_digest(run: Any) -> str | None:
    """The source run's data digest: its ``runner.dataset_digest`` tag, else the digest its
    MLflow dataset inputs record (a run whose tags were lost or never written)."""
    tag = run.data.tags.get(contract.DATASET_DIGEST)
    if tag:
        return str(tag)
    digests = input_digests(run)
    return digests.get("training") or next(iter(digests.values()), None)


def dataset_warnings(
    tags: Mapping[str, str], digest_now: str, *, overridden: bool, then: str | None = None
) -> list[str]:
    """A warning when the dataset's content digest differs from the source run's (``then``,
    by default the ``runner.dataset_digest`` of ``tags``)."""
    then = then or tags.get(contract.DATASET_DIGEST)
    if not then:
        return ["the source run recorded no dataset digest, so its data cannot be compared."]
    if then == digest_now:
        return []
    why = (
        " (expected: your overrides change dataset.*)"
        if overridden
        else ": the data changed since the run, so results may differ"
    )
    return [f"the dataset differs: digest {then} then, {digest_now} now{why}."]


def redacted_keys(job: Mapping[str, Any]) -> list[str]:
    """Config paths whose logged value is the redaction mark (a secret never logged)."""
    return [path for path, value in flatten(dict(job)) if value == REDACTED]


def is_timing(key: str) -> bool:
    """Timing metrics (``*_time_s``) and MLflow's system metrics (``system/*``: CPU, memory,
    GPU samples, ``tracking.system_metrics=true``) measure the machine, not the model: they
    differ run to run, so replay --check leaves them out."""
    return key.endswith("_time_s") or key.startswith("system/")


@dataclass
class MetricRow:
    """One metric of ``replay --check``: last values, largest difference over its steps."""

    key: str
    original: float | None
    replay: float | None
    difference: float | None
    equal: bool
    note: str = ""


def _close(a: float, b: float, rtol: float) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    points = client.get_metric_history(run_id, key)
    return sorted((int(m.step), float(m.value)) for m in points)


def compare_metrics(
    client: MlflowClient, original: str, replay: str, *, rtol: float = 0.0
) -> list[MetricRow]:
    """Compare every metric of two runs (timing metrics aside), step by step.

    Args:
        client: A client on the store holding both runs.
        original: The source run id.
        replay: The replay's run id.
        rtol: Relative tolerance; 0 means bitwise equal.
    """
    last_a = client.get_run(original).data.metrics
    last_b = client.get_run(replay).data.metrics
    rows: list[MetricRow] = []
    for key in sorted(set(last_a) | set(last_b)):
        if is_timing(key):
            continue
        a, b = last_a.get(key), last_b.get(key)
        if a is None or b is None:
            rows.append(MetricRow(key, a, b, None, False, "missing in one run"))
            continue
        ha, hb = _history(client, original, key), _history(client, replay, key)
        if [s for s, _ in ha] != [s for s, _ in hb]:
            rows.append(MetricRow(key, a, b, b - a, False, f"{len(ha)} vs {len(hb)} steps"))
            continue
        worst, equal = 0.0, True
        for (_, va), (_, vb) in zip(ha, hb, strict=True):
            if not _close(va, vb, rtol):
                equal = False
            if not (math.isnan(va) and math.isnan(vb)):
                worst = max(worst, abs(vb - va))
        note = f"{len(ha)} steps" if len(ha) > 1 else ""
        rows.append(MetricRow(key, a, b, worst, equal, note))
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else repr(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def metric_table(rows: Sequence[MetricRow]) -> str:
    """The ``--check`` table: metric, original, replay, difference (max over steps)."""
    body = [
        [
            r.key,
            _fmt(r.original),
            _fmt(r.replay),
            "-" if r.difference is None else ("0" if r.difference == 0 else f"{r.difference:.3g}"),
            ("ok" if r.equal else "DIFFERS") + (f" ({r.note})" if r.note else ""),
        ]
        for r in rows
    ]
    return format_table(["metric", "original", "replay", "difference", ""], body)
