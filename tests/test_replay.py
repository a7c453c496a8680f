"""``python -m runner.replay`` and ``python -m runner.diff`` against a real SQLite store.

Source runs (one per model family, and a sweep child) are logged once per module through the
runner's own entry point, in-process; replays run in-process through ``replay.main`` except
one, which goes through the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import diff, replay
from tests.conftest import run_cli
from tests.services import free_port

# -- fixtures ---------------------------------------------------------------------------------


class Store:
    """The module's store: its URI, a client, and the source runs by name."""

    def __init__(self, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.root = root
        self.uri = uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(uri)
        self.runs: dict[str, str] = {}

    def run_ids(self) -> set[str]:
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return {r.info.run_id for r in self.client.search_runs(exps, max_results=1000)}


def _run_runner(*args: str) -> None:
    """``python -m runner *args``, in-process (the module's entry point itself)."""
    from hydra.core.global_hydra import GlobalHydra

    from runner import __main__ as entry

    argv = sys.argv
    sys.argv = ["runner", *args]
    try:
        entry.main()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("replay-store")
    shutil.copy(_template_db, root / "mlflow.db")
    s = Store(root)
    # Model and figure logging are most of a job's time here; one run (logreg) keeps them.
    quick = ["tracking.log_model=false", "tracking.log_figures=false"]
    jobs = {
        "logreg": ["model=logreg"],
        "xgb": ["model=xgb", "model.n_estimators=10", *quick],
        "mlp": ["model=mlp", "model.epochs=3", "model.hidden_sizes=[16]", *quick],
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", s.uri)
        for name, args in jobs.items():
            before = s.run_ids()
            _run_runner(*args)
            (s.runs[name],) = s.run_ids() - before
        before = s.run_ids()
        _run_runner("-m", "model=rf", "model.n_estimators=5", "model.max_depth=2,3", *quick)
        children = [s.client.get_run(r) for r in s.run_ids() - before if r not in s.runs.values()]
        kids = [r for r in children if r.data.tags.get("runner.kind") == "job"]
        (second,) = [r for r in kids if r.data.params["model.max_depth"] == "3"]
        s.runs["rf-sweep-child"] = second.info.run_id
    yield s
    from runner.tracking import session

    session.reset()


def _replay(store: Store, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = replay.main([*args, "--tracking-uri", store.uri])
    out = capsys.readouterr()
    return code, out.out, out.err


def _latest_replay(store: Store, source: str) -> Any:
    runs = store.client.search_runs(
        [store.client.get_run(source).info.experiment_id],
        filter_string=f"tags.`runner.replay_of` = '{source}'",
        order_by=["attributes.start_time DESC"],
    )
    assert runs, f"no replay of {source}"
    return runs[0]


def _craft(
    store: Store,
    source: str,
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A copy of run ``source`` (tags, params, config artifacts), optionally edited."""
    from mlflow.entities import Param

    c = store.client
    src = c.get_run(source)
    kept = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.")}
    run = c.create_run(src.info.experiment_id, run_name="crafted", tags={**kept, **(tags or {})})
    run_id = run.info.run_id
    c.log_batch(run_id, params=[Param(k, v) for k, v in src.data.params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            got = Path(c.download_artifacts(source, f".hydra/{name}", tmp))
            Path(tmp, "out", ".hydra").mkdir(parents=True, exist_ok=True)
            got.rename(Path(tmp, "out", ".hydra", name))
        path = Path(tmp, "out", ".hydra", "config.yaml")
        job = yaml.safe_load(path.read_text())
        if edit is not None:
            edit(job)
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        c.log_artifacts(run_id, str(Path(tmp, "out")))
    c.set_terminated(run_id)
    return run_id


# -- replay --check: bitwise identical per model family ---------------------------------------


@pytest.mark.parametrize("name", ["logreg", "xgb", "rf-sweep-child"])
def test_replay_check_is_identical(
    store: Store, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = store.runs[name]
    code, out, err = _replay(store, source, "--check", capsys=capsys)
    assert code == 0, out + err
    assert "check passed" in out
    src, new = store.client.get_run(source), _latest_replay(store, source)
    assert new.data.params == src.data.params
    assert new.info.status == "FINISHED"
    assert new.data.tags["runner.kind"] == "job"
    # A sweep child replays as a single run: no parent, no job number.
    assert "mlflow.parentRunId" not in new.data.tags
    assert "runner.job_num" not in new.data.tags
    assert source in new.data.tags["mlflow.note.content"]
    assert new.data.tags["runner.overrides"] == src.data.tags["runner.overrides"]
    timing = {k for k in src.data.metrics if k.endswith("_time_s")}
    assert timing
    assert {k: v for k, v in new.data.metrics.items() if k not in timing} == {
        k: v for k, v in src.data.metrics.items() if k not in timing
    }
    # Nothing differs, so nothing to warn about but the git state of this test directory.
    assert "package" not in err and "dataset differs" not in err, err


def test_replay_mlp_through_the_cli_is_identical(store: Store, workdir: Path) -> None:
    # The torch MLP, replayed in another process than the one that logged it.
    source = store.runs["mlp"]
    proc = run_cli(source, "--check", "--tracking-uri", store.uri, module="runner.replay")
    assert "check passed" in proc.stdout, proc.stdout + proc.stderr
    assert "train_loss" in proc.stdout and "3 steps" in proc.stdout
    new = _latest_replay(store, source)
    assert new.data.params == store.client.get_run(source).data.params
    assert new.data.params["model"] == "mlp"


@pytest.fixture(scope="module")
def xgb_override(store: Store) -> tuple[int, str, str]:
    """The xgb run replayed with model.max_depth=3 and --check (stdout, new run id)."""
    import contextlib
    import io

    out = io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        mp.chdir(store.root)
        code = replay.main(
            [store.runs["xgb"], "model.max_depth=3", "--check", "--tracking-uri", store.uri]
        )
    return code, out.getvalue(), _latest_replay(store, store.runs["xgb"]).info.run_id


def test_replay_with_override_changes_only_that_param(
    store: Store, xgb_override: tuple[int, str, str]
) -> None:
    code, out, new_id = xgb_override
    src, new = store.client.get_run(store.runs["xgb"]), store.client.get_run(new_id)
    changed = {
        k
        for k in src.data.params.keys() | new.data.params.keys()
        if src.data.params.get(k) != new.data.params.get(k)
    }
    assert changed == {"model.max_depth"}
    assert (src.data.params["model.max_depth"], new.data.params["model.max_depth"]) == ("6", "3")
    assert json.loads(new.data.tags["runner.replay.overrides"]) == ["model.max_depth=3"]
    assert json.loads(new.data.tags["runner.overrides"]) == [
        *json.loads(src.data.tags["runner.overrides"]),
        "model.max_depth=3",
    ]
    assert json.loads(src.data.tags["runner.overrides"])[:2] == [
        "model=xgb",
        "model.n_estimators=10",
    ]
    # --check reports the metrics the change moved, and fails.
    assert code == 1
    assert "check FAILED" in out
    assert any(line.startswith("train_accuracy") and "DIFFERS" in line for line in out.splitlines())
    assert "params that differ although" not in out


def test_replay_group_switch_uses_todays_group(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _replay(store, store.runs["logreg"], "--dry-run", "model=rf", capsys=capsys)
    assert code == 0, err
    assert "sklearn.ensemble.RandomForestClassifier" in out
    assert "model: logreg -> rf" in err


# -- security ---------------------------------------------------------------------------------


def untrusted_model(**kwargs: Any) -> Any:
    """A harmless model factory outside the allow-list (tests. is not allowed)."""
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="prior")


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("os.system", "'os.system'"),
        # An allowed path that reaches a disallowed object through a module attribute.
        ("runner.tracking.provenance.subprocess.run", "subprocess"),
    ],
)
def test_replay_refuses_targets_outside_the_allow_list(
    store: Store, target: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(job: dict[str, Any]) -> None:
        job["model"] = {"_target_": target, "command": "touch pwned"}

    crafted = _craft(store, store.runs["logreg"], edit=edit)
    code, _, err = _replay(store, crafted, capsys=capsys)
    assert code == 2
    assert "refusing to replay" in err and named in err and "--trust" in err
    assert not Path("pwned").exists()
    assert not store.client.search_runs(
        [store.client.get_run(crafted).info.experiment_id],
        filter_string=f"tags.`runner.replay_of` = '{crafted}'",
    )


def test_replay_trust_and_allow_target(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    target = f"{__name__}.untrusted_model"

    def edit(job: dict[str, Any]) -> None:
        job["model"] = {"_target_": target}

    crafted = _craft(store, store.runs["logreg"], edit=edit)
    code, _, err = _replay(store, crafted, "--dry-run", capsys=capsys)
    assert code == 2 and repr(target) in err
    code, _, err = _replay(store, crafted, "--dry-run", "--allow-target", "tests.", capsys=capsys)
    assert code == 0, err
    code, _, err = _replay(store, crafted, "--trust", capsys=capsys)
    assert code == 0, err
    assert "--trust" in err
    new = _latest_replay(store, crafted)
    assert new.info.status == "FINISHED"
    assert new.data.params["model._target_"] == target


# -- warnings ---------------------------------------------------------------------------------


def test_replay_warns_about_changed_data_and_packages(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    crafted = _craft(
        store,
        store.runs["logreg"],
        tags={
            "runner.pkg.numpy": "0.0.1",
            "runner.dataset_digest": "sha256:0000",
            "runner.git.commit": "0123456789abcdef",
            "runner.git.dirty": "true",
        },
    )
    # --dry-run reads no data: the digest is compared by a real replay only.
    code, _, err = _replay(store, crafted, "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "dataset differs" not in err and "no data was read" in err
    code, _, err = _replay(store, crafted, capsys=capsys)
    assert code == 2 and "sha256:0000" in err and "--allow-changed-data" in err, err
    code, _, err = _replay(store, crafted, "--allow-changed-data", capsys=capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("package numpy differs: 0.0.1 then" in w for w in warnings), err
    assert any("dataset differs: digest sha256:0000 then" in w for w in warnings), err
    assert any("0123456789ab" in w for w in warnings), err
    assert any("uncommitted changes" in w and "git_diff.patch" in w for w in warnings), err
    assert not any("package scikit-learn" in w for w in warnings), err


# -- diff -------------------------------------------------------------------------------------


def test_diff_table_and_json(
    store: Store, xgb_override: tuple[int, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source, new = store.runs["xgb"], xgb_override[2]
    assert diff.main([source, new, "--tracking-uri", store.uri]) == 0
    out = capsys.readouterr().out
    params = out.split("params:")[1].split("\n\n")[0]
    assert "model.max_depth" in params and "seed" not in params
    assert "choices: no differences" in out
    assert "provenance: no differences" in out
    assert "runner.replay_of" in out

    assert diff.main([source, new, "--all", "--tracking-uri", store.uri]) == 0
    out = capsys.readouterr().out
    assert "seed" in out.split("params:")[1] and "runner.pkg.numpy" in out

    assert diff.main([source, new, "--json", "--tracking-uri", store.uri]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["a"], data["b"]) == (source, new)
    assert data["sections"]["params"] == [
        {"key": "model.max_depth", "a": "6", "b": "3", "equal": False}
    ]
    assert data["sections"]["overrides"] == [
        {"key": "model.max_depth", "a": None, "b": "3", "equal": False}
    ]
    assert data["sections"]["provenance"] == []
    metrics = {r["key"]: r for r in data["sections"]["metrics"]}
    assert metrics["train_accuracy"]["difference"] == pytest.approx(
        metrics["train_accuracy"]["b"] - metrics["train_accuracy"]["a"]
    )

    # Two different model families: the group choice differs.
    assert diff.main([store.runs["logreg"], source, "--json", "--tracking-uri", store.uri]) == 0
    choices = json.loads(capsys.readouterr().out)["sections"]["choices"]
    assert choices == [{"key": "model", "a": "logreg", "b": "xgb", "equal": False}]


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_errors(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    c = store.client
    code, _, err = _replay(store, "0" * 32, capsys=capsys)
    assert code == 2 and "does not exist" in err and "--tracking-uri" in err

    exp = c.get_run(store.runs["logreg"]).info.experiment_id
    bare = c.create_run(exp, run_name="not-ours").info.run_id
    c.set_terminated(bare)
    code, _, err = _replay(store, bare, capsys=capsys)
    assert code == 2 and "has no .hydra/config.yaml" in err

    ftp = c.create_experiment("ftp-artifacts", f"ftp://127.0.0.1:{free_port()}/a")
    far = c.create_run(ftp).info.run_id
    c.set_terminated(far)
    code, _, err = _replay(store, far, capsys=capsys)
    assert code == 2 and "cannot be reached" in err

    def rename(job: dict[str, Any]) -> None:
        job["model"]["_target_"] = "models.renamed.linear_model"

    moved = _craft(store, store.runs["logreg"], edit=rename)
    code, _, err = _replay(store, moved, capsys=capsys)
    assert code == 2 and "no longer composes" in err and "models.renamed" in err

    code, _, err = _replay(store, store.runs["logreg"], "model=nope", capsys=capsys)
    assert code == 2 and "no longer composes" in err and "nope" in err

    for args in (
        ["x", "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
        ["x", "--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"],
    ):
        assert replay.main(args) == 2
        assert "error:" in capsys.readouterr().err
    assert diff.main(["0" * 32, store.runs["logreg"], "--tracking-uri", store.uri]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_tolerance(store: Store, xgb_override: tuple[int, str, str]) -> None:
    from runner.replay.checks import compare_metrics, metric_table

    source, new = store.runs["xgb"], xgb_override[2]
    exact = compare_metrics(store.client, source, new)
    assert not all(r.equal for r in exact)
    assert not any(r.key.endswith("_time_s") for r in exact)
    loose = compare_metrics(store.client, source, new, rtol=0.05)
    assert all(r.equal for r in loose), metric_table(loose)
    assert "boost_val_mlogloss" in metric_table(loose)


def test_crafted_choice_cannot_write_outside_the_config_dir(tmp_path: Path) -> None:
    from runner.errors import ConfigError
    from runner.replay.rebuild import write_config_dir

    with pytest.raises(ConfigError, match="not a valid config name"):
        write_config_dir(
            tmp_path / "conf", {"model": {"a": 1}}, {"model": "../../evil"}, run_id="r"
        )
    assert not (tmp_path / "evil.yaml").exists()
