"""Hostile ``mlflow.parentRunId`` tags: every command that walks parents survives them.

Anyone who can log a run can write its tags, so a real SQLite store gets runs whose parent
tag a client set to the run itself, to a 2- and a 3-cycle, to a run that does not exist and
to garbage (empty, not an id, very long, terminal escapes). Each command then runs as its
CLI's ``main()``: no traceback, a ``warning:`` that says what is wrong and how to fix it,
its documented exit status, and the other runs still processed.
"""

from __future__ import annotations

import io
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner import compare, diff, lifecycle, sync
from runner.tracking import reader
from runner.tracking.reader import Lineage

DAY = 86_400_000
PARENT = "mlflow.parentRunId"
#: Garbage parent tags: none is a run id.
GARBAGE = {
    "empty": "",
    "junk": "not a run id; ' or 1=1 --\x1b[2J",
    "long": "f" * 7000,
}
#: Shaped like a run id, but no run has it.
MISSING = {"missing": "0" * 32, "nonhex": "z" * 32}


@dataclass
class Hostile:
    """A store's runs by name (``self``, ``a2``/``b2``, ``x3``/``y3``/``z3``, ...)."""

    ids: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.ids[name]

    def name(self, run_id: str) -> str:
        return next(k for k, v in self.ids.items() if v == run_id)


def _make(
    client: Any,
    experiment_id: str,
    name: str,
    *,
    status: str = "FAILED",
    age_ms: int = 10 * DAY,
    tags: dict[str, str] | None = None,
) -> str:
    when = int(time.time() * 1000) - age_ms
    run = client.create_run(experiment_id, start_time=when, run_name=name, tags=tags or {})
    rid: str = run.info.run_id
    client.log_metric(rid, "val_accuracy", 0.5 + len(name) / 100, timestamp=when)
    if status != "RUNNING":
        client.set_terminated(rid, status=status, end_time=when)
    return rid


def build(
    client: Any, experiment: str, *, status: str = "FAILED", tags: dict[str, str] | None = None
) -> Hostile:
    """Runs with every kind of hostile parent tag, and sound ones beside them.

    Sound: ``plain`` (no parent), ``P`` <- ``K`` <- ``G`` (a 3-level tree), ``under`` (a
    child of the 2-cycle's ``a2``).
    """
    exp = client.create_experiment(experiment)
    names = ["self", "a2", "b2", "x3", "y3", "z3", "under", "plain", "P", "K", "G"]
    names += [*GARBAGE, *MISSING]
    ids = {n: _make(client, exp, n, status=status, tags=tags) for n in names}

    def parent(child: str, value: str) -> None:
        client.set_tag(ids[child], PARENT, value)

    parent("self", ids["self"])
    parent("a2", ids["b2"])
    parent("b2", ids["a2"])
    parent("x3", ids["y3"])
    parent("y3", ids["z3"])
    parent("z3", ids["x3"])
    parent("under", ids["a2"])
    parent("K", ids["P"])
    parent("G", ids["K"])
    for n, value in {**GARBAGE, **MISSING}.items():
        parent(n, value)
    return Hostile(ids)


CYCLIC = ("self", "a2", "b2", "x3", "y3", "z3")
SOUND = ("under", "plain", "P", "K", "G", *GARBAGE, *MISSING)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "RecursionError" not in text, text


def _states(client: Any, run_ids: list[str]) -> dict[str, str]:
    return {rid: client.get_run(rid).info.lifecycle_stage for rid in run_ids}


def _main(capsys: pytest.CaptureFixture[str], fn: Any, *argv: str) -> tuple[int, str, str]:
    saved, sys.stdin = sys.stdin, io.StringIO("")
    try:
        rc = fn(list(argv))
    finally:
        sys.stdin = saved
    out = capsys.readouterr()
    _no_traceback(out.out + out.err)
    return rc, out.out, out.err


def _cycle_messages(h: Hostile) -> dict[str, str]:
    a, b, x, y, z = (h[n] for n in ("a2", "b2", "x3", "y3", "z3"))
    return {
        "self": f"run {h['self']} names itself as its parent ({PARENT} = {h['self']})",
        "a2": f"in a cycle of parent runs: {a} -> {b} -> {a}",
        "b2": f"in a cycle of parent runs: {b} -> {a} -> {b}",
        "x3": f"in a cycle of parent runs: {x} -> {y} -> {z} -> {x}",
        "y3": f"in a cycle of parent runs: {y} -> {z} -> {x} -> {y}",
        "z3": f"in a cycle of parent runs: {z} -> {x} -> {y} -> {z}",
    }


# -- the shared walk --------------------------------------------------------------------------
def test_lineage_classifies_every_chain(client: Any) -> None:
    h = build(client, "hostile")
    runs = [client.get_run(rid) for rid in h.ids.values()]
    lineage = Lineage(runs, complete=True)
    for n in CYCLIC:
        assert lineage.on_cycle(h[n]), n
        problem = lineage.problem(h[n])
        assert problem is not None and problem.kind == "cycle"
        assert lineage.parent(h[n]) is None
    assert lineage.ancestors(h["G"]) == (h["K"], h["P"])
    assert lineage.problem(h["G"]) is None
    # A run below a cycle is not on it; its chain ends at the cycle's problem.
    assert lineage.ancestors(h["under"]) == (h["a2"],)
    assert not lineage.on_cycle(h["under"])
    under = lineage.problem(h["under"])
    assert under is not None and under.run_id == h["a2"]
    for n, value in GARBAGE.items():
        problem = lineage.problem(h[n])
        assert problem is not None and (problem.kind, problem.parent) == ("garbled", value)
    for n, value in MISSING.items():
        problem = lineage.problem(h[n])
        assert problem is not None and (problem.kind, problem.parent) == ("missing", value)
    long = str(lineage.problem(h["long"]))
    assert "(7000 characters)" in long and len(long) < 600
    assert "\x1b" not in str(lineage.problem(h["junk"]))  # shown escaped, never sent
    assert f"delete_tag({h['junk']!r}, {PARENT!r})" in str(lineage.problem(h["junk"]))
    # Without `complete`, a parent outside the runs given just ends the chain.
    partial = Lineage([client.get_run(h["G"])])
    assert partial.ancestors(h["G"]) == (h["K"],) and partial.problem(h["G"]) is None


def test_lineage_fetches_parents_with_a_bound(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    h = build(client, "hostile")
    fetched: list[str] = []

    def lookup(rid: str) -> Any:
        fetched.append(rid)
        return reader.get_run(client, rid)

    lineage = Lineage([client.get_run(h["G"]), client.get_run(h["x3"])], lookup=lookup)
    assert lineage.ancestors(h["G"]) == (h["K"], h["P"]) and lineage.problem(h["G"]) is None
    assert lineage.on_cycle(h["x3"])
    assert sorted(fetched) == sorted([h["K"], h["P"], h["y3"], h["z3"]])  # each once
    missing = Lineage([client.get_run(h["missing"])], lookup=lookup).problem(h["missing"])
    assert missing is not None and missing.kind == "missing"
    # A long chain costs at most MAX_FETCHED_PARENTS requests.
    monkeypatch.setattr(reader, "MAX_FETCHED_PARENTS", 1)
    deep = Lineage([client.get_run(h["G"])], lookup=lookup)
    problem = deep.problem(h["G"])
    assert problem is not None and problem.kind == "deep" and problem.run_id == h["K"]
    assert deep.ancestors(h["G"]) == (h["K"],)


# -- lifecycle --------------------------------------------------------------------------------
def test_prune_failed_skips_cycles_and_prunes_the_rest(
    client: Any, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    h = build(client, "hostile")
    exp = client.get_experiment_by_name("hostile").experiment_id
    good = _make(client, exp, "good", status="FINISHED")
    rc, out, err = _main(capsys, lifecycle.main, "prune-failed", "--older-than", "1d", "--yes")
    assert rc == 0, err
    states = _states(client, [*h.ids.values(), good])
    assert {h.name(r) for r, s in states.items() if s == "deleted"} == set(SOUND)
    assert all(states[h[n]] == "active" for n in CYCLIC) and states[good] == "active"
    # Children first: K before P, G before K.
    assert out.index(f"pruned run {h['G']}") < out.index(f"pruned run {h['K']}")
    assert out.index(f"pruned run {h['K']}") < out.index(f"pruned run {h['P']}")
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(CYCLIC), err
    for n, message in _cycle_messages(h).items():
        line = next(w for w in warnings if f"skipped run {h[n]} (hostile/{n}, FAILED)" in w)
        assert message in line and f"delete_tag({h[n]!r}, {PARENT!r})" in line


def test_policy_runs_every_step_past_cycles(
    client: Any, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nightly routine: stale RUNNING cycles are closed, then skipped by prune-failed."""
    h = build(client, "hostile", status="RUNNING")
    rc, out, err = _main(capsys, lifecycle.main, "policy", "default", "--yes")
    assert rc == 0, out + err
    assert "close-stale: done" in out and "prune-failed: done" in out
    assert "archive: " in out and "gc: " in out
    for rid in h.ids.values():
        assert client.get_run(rid).info.status == "KILLED"  # every stale run closed
    states = _states(client, list(h.ids.values()))
    assert {h.name(r) for r, s in states.items() if s == "deleted"} == set(SOUND)
    # Planned twice (validated, then run): each cyclic run is reported once.
    for n in CYCLIC:
        assert err.count(f"skipped run {h[n]} ") == 1, err


# -- compare ----------------------------------------------------------------------------------
def _sweep(client: Any, experiment: str, parent_tag: str | None, n_children: int = 2) -> Hostile:
    """A sweep parent ``S`` with children ``c0..``; ``S``'s own parent tag is hostile."""
    exp = client.create_experiment(experiment)
    ids = {"S": _make(client, exp, "sweep", status="FINISHED", tags={"runner.kind": "sweep"})}
    for i in range(n_children):
        ids[f"c{i}"] = _make(
            client, exp, f"c{i}", status="FINISHED", tags={"runner.kind": "job", PARENT: ids["S"]}
        )
    if parent_tag is not None:
        client.set_tag(ids["S"], PARENT, parent_tag)
    return Hostile(ids)


#: The sweep S's parent tag: itself, or a loop through its children. Then which of its
#: children c0..c3 are compared, and which are left out for being on the loop.
LOOPS = {
    "self": ({"S": "S"}, ["c0", "c1", "c2", "c3"], []),
    "cycle2": ({"S": "c0"}, ["c1", "c2", "c3"], ["c0"]),  # S -> c0 -> S
    # S -> c0 -> c1 -> S: c0 is c1's child now, c1 the sweep's.
    "cycle3": ({"S": "c0", "c0": "c1"}, ["c2", "c3"], ["c1"]),
}


@pytest.mark.parametrize("kind", list(LOOPS))
def test_compare_sweep_leaves_out_a_cycle_through_the_sweep(
    client: Any, tracking_uri: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    h = _sweep(client, "sweeps", None, n_children=4)
    links, kept, left_out = LOOPS[kind]
    for child, parent in links.items():
        client.set_tag(h[child], PARENT, h[parent])
    csv = tmp_path / "runs.csv"
    argv = ["--sweep", h["S"], "--sort", "metrics.val_accuracy", "--csv", str(csv), "--tag-best"]
    rc, _, err = _main(capsys, compare.main, *argv)
    assert rc == 0, err
    listed = {line.split(",")[1] for line in csv.read_text().splitlines()[1:]}
    assert listed == {h[c] for c in kept}
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: sweep {h['S']}: run {h['S']} ")
    if kind == "self":
        assert "names itself as its parent" in warning
    else:
        assert f"in a cycle of parent runs: {h['S']} -> {h['c0']} -> " in warning
        assert f"left out of its runs: {', '.join(h[c] for c in left_out)}" in warning
    best = {
        c for c in ("c0", "c1", "c2", "c3") if client.get_run(h[c]).data.tags.get("runner.best")
    }
    assert len(best) == 1 and best <= set(kept)  # the best of the runs compared


@pytest.mark.parametrize("value", [*GARBAGE.values(), *MISSING.values()], ids=[*GARBAGE, *MISSING])
def test_compare_sweep_with_a_broken_parent_still_compares(
    client: Any, tracking_uri: str, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    h = _sweep(client, "sweeps", value)
    rc, out, err = _main(capsys, compare.main, "--sweep", h["S"])
    assert rc == 0, err
    assert "2 of 2 runs" in out
    assert f"warning: sweep {h['S']}: run {h['S']}'s" in err
    assert ("not a run id" if value in GARBAGE.values() else "is not in this tracking store") in err
    assert "its runs are compared all the same" in err


# -- sync -------------------------------------------------------------------------------------
def test_sync_copies_the_sound_runs_and_reports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _template_db: Path
) -> None:
    from mlflow.tracking import MlflowClient

    buffer, target = tmp_path / "buffer.db", tmp_path / "target.db"
    shutil.copy(_template_db, buffer)
    shutil.copy(_template_db, target)
    src = MlflowClient(f"sqlite:///{buffer}")
    h = build(
        src, "hostile", status="FINISHED", tags={"runner.buffered_for": f"sqlite:///{target}"}
    )
    rc, out, err = _main(capsys, sync.main, "--buffer", str(buffer))
    assert rc == 0, err
    dst = MlflowClient(f"sqlite:///{target}")
    exp = dst.get_experiment_by_name("hostile")
    copies = {r.data.tags["runner.synced_from"]: r for r in dst.search_runs([exp.experiment_id])}
    blocked = {*CYCLIC, "under"}  # `under` is a child of the 2-cycle's a2
    assert {h.name(rid) for rid in copies} == set(h.ids) - blocked
    # Sound links are re-pointed at the copies; broken ones are dropped.
    new = {h.name(old): run.info.run_id for old, run in copies.items()}
    assert copies[h["K"]].data.tags[PARENT] == new["P"]
    assert copies[h["G"]].data.tags[PARENT] == new["K"]
    for n in (*GARBAGE, *MISSING, "plain", "P"):
        assert PARENT not in copies[h[n]].data.tags, n
    assert f"synced {len(copies)} run(s); 0 already synced; 0 still running (not synced); " in out
    assert f"{len(blocked)} skipped" in out
    for n, message in _cycle_messages(h).items():
        assert f"warning: skipped buffered run {h[n]} (left in the buffer): " in err
        assert message in err
    assert (
        f"warning: skipped buffered run {h['under']} (left in the buffer): its parent run "
        f"{h['a2']} was skipped" in err
    )
    for n in GARBAGE:
        assert f"warning: buffered run {h[n]} copied as {new[n]}, with no parent: " in err
    assert "(7000 characters), not a run id" in err
    for n in MISSING:
        assert f"parent run {MISSING[n]} ({PARENT}) is not in this tracking store" in err
    # Once the tags are fixed, the next sync copies what was left.
    for n in CYCLIC:
        src.delete_tag(h[n], PARENT)
    rc, out, err = _main(capsys, sync.main, "--buffer", str(buffer))
    assert rc == 0 and "warning:" not in err, err
    assert f"synced {len(blocked)} run(s); {len(copies)} already synced" in out


# -- diff -------------------------------------------------------------------------------------
def test_diff_warns_of_broken_parents_and_still_diffs(
    client: Any, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    h = build(client, "hostile", status="FINISHED")
    messages = _cycle_messages(h)
    rc, out, err = _main(capsys, diff.main, h["self"], h["x3"])
    assert rc == 0, err
    assert out.startswith(f"A = {h['self']}\nB = {h['x3']}") and "metrics:" in out
    assert f"warning: run A ({h['self']}): {messages['self']}" in err
    assert f"warning: run B ({h['x3']}): run {h['x3']} is {messages['x3']}" in err

    rc, out, err = _main(capsys, diff.main, h["long"], h["nonhex"], "--json")
    assert rc == 0, err
    assert '"sections"' in out
    assert "warning: run A" in err and "(7000 characters), not a run id" in err
    assert f"warning: run B ({h['nonhex']}): run {h['nonhex']}'s parent run {'z' * 32}" in err

    # A run below a cycle: the problem is its ancestor's, named as such.
    rc, out, err = _main(capsys, diff.main, h["under"], h["G"])
    assert rc == 0, err
    assert f"warning: run A ({h['under']}): run {h['a2']} is in a cycle" in err
    assert "run B" not in err  # G's chain (K, P) is sound
