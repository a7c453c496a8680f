"""``python -m runner.replay`` against a store an attacker can write to.

Every case is a run whose logged artifacts (``.hydra/config.yaml``, ``.hydra/hydra.yaml``)
or tags were crafted; each is replayed with and without ``--dry-run`` and must run nothing
(marker files), delete and write nothing, and copy nothing of the replaying user's
environment or files into the store.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from runner import replay

#: Set in the replaying user's environment: it must never reach the store.
SECRET = "replayer-env-Zq7x9K2"
#: The first line of a file of the replaying user's: its column names must stay at home.
PRIVATE_HEADER = "private_col_W4n8,label"

# -- what a crafted config may try to call -----------------------------------------------------


#: Where :func:`pwn` leaves its marker by default (in the test's launch directory).
MARKER = "pwned-marker"


def pwn(path: str = MARKER, **_: Any) -> Any:
    """What an attacker's target does: leave a marker (stands for any code run)."""
    Path(path).write_text("pwned")
    from sklearn.dummy import DummyClassifier

    return DummyClassifier()


# -- the store ---------------------------------------------------------------------------------


@dataclass
class Store:
    root: Path
    uri: str
    client: Any
    source: str
    failed: str
    runs: dict[str, str] = field(default_factory=dict)

    def run_ids(self) -> set[str]:
        exps = [e.experiment_id for e in self.client.search_experiments(view_type=3)]
        return {r.info.run_id for r in self.client.search_runs(exps, run_view_type=3)}

    def active(self) -> set[str]:
        exps = [e.experiment_id for e in self.client.search_experiments()]
        return {r.info.run_id for r in self.client.search_runs(exps)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> Iterator[Store]:
    from mlflow.tracking import MlflowClient

    from tests.test_replay import _run_runner

    root = tmp_path_factory.mktemp("hostile-store")
    shutil.copy(_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        _run_runner("tracking.log_model=false", "tracking.log_figures=false")
    (source,) = {
        r.info.run_id
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
    }
    exp = client.get_run(source).info.experiment_id
    failed = client.create_run(exp, run_name="a failed run").info.run_id
    client.set_terminated(failed, "FAILED")
    yield Store(root, uri, client, source, failed)
    from runner.tracking import session

    session.reset()


def craft(
    store: Store,
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
    choices: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A copy of the source run with its logged config (and choices, tags) edited."""
    from mlflow.entities import Param

    c = store.client
    src = c.get_run(store.source)
    kept = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.")}
    run_id = c.create_run(
        src.info.experiment_id, run_name="crafted", tags={**kept, **(tags or {})}
    ).info.run_id
    c.log_batch(run_id, params=[Param(k, v) for k, v in src.data.params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out", ".hydra")
        out.mkdir(parents=True)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            Path(c.download_artifacts(store.source, f".hydra/{name}", tmp)).rename(out / name)
        job = yaml.safe_load((out / "config.yaml").read_text())
        if edit is not None:
            edit(job)
        (out / "config.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
        hydra = yaml.safe_load((out / "hydra.yaml").read_text())
        hydra["hydra"]["runtime"]["choices"].update(choices or {})
        (out / "hydra.yaml").write_text(yaml.safe_dump(hydra, sort_keys=False))
        c.log_artifacts(run_id, str(Path(tmp, "out")))
    c.set_terminated(run_id)
    store.runs[run_id] = "crafted"
    return run_id


def store_bytes(store: Store) -> bytes:
    """Every byte of the store: the SQLite file and every artifact."""
    data = b""
    for path in sorted(store.root.rglob("*")):
        if path.is_file():
            data += path.read_bytes()
    return data


# -- the corpus ---------------------------------------------------------------------------------


@dataclass
class Case:
    """A crafted run and what replay must say about it (None: it may run, harmlessly)."""

    edit: Callable[[dict[str, Any], Path], None]
    refused: str | None
    choices: dict[str, str] = field(default_factory=dict)
    dry_refused: str | None = "same"
    args: tuple[str, ...] = ()


def _hydra_through_a_package(job: dict[str, Any], marker: Path) -> None:
    # Case 1 of the issue: a `_global_` node placed by an `x@_global_` choice adds a callback.
    callback = {"_target_": f"{__name__}.pwn", "path": str(marker)}
    job["_global_"] = {"hydra": {"callbacks": {"evil": callback}}}


def _root_hydra(job: dict[str, Any], marker: Path) -> None:
    job["hydra"] = {"callbacks": {"evil": {"_target_": f"{__name__}.pwn", "path": str(marker)}}}


def _root_defaults(job: dict[str, Any], marker: Path) -> None:
    job["defaults"] = [{"override /hydra/job_logging": "disabled"}]


def _group_defaults(job: dict[str, Any], marker: Path) -> None:
    job["model"]["defaults"] = [{"override /hydra/job_logging": "disabled"}]


def _foreign_group(job: dict[str, Any], marker: Path) -> None:
    job["evil"] = {"_target_": f"{__name__}.pwn", "path": str(marker)}


def _resolves_twice(job: dict[str, Any], marker: Path) -> None:
    # Case 2: `${hydra:mode}` is unset while replay composes and checks, RUN once it runs.
    job["alt"] = {"RUN": f"{__name__}.pwn"}
    job["model"] = {"_target_": "${oc.select:alt.${hydra:mode},sklearn.dummy.DummyClassifier}"}


def _target(where: str, target: str, **kwargs: Any) -> Callable[[dict[str, Any], Path], None]:
    """Put ``{_target_: target, **kwargs}`` at the dotted path ``where`` ("MARKER": the path)."""

    def edit(job: dict[str, Any], marker: Path) -> None:
        node: Any = {"_target_": target, **kwargs}
        node = {k: (str(marker) if v == "MARKER" else v) for k, v in node.items()}
        *parents, last = where.split(".")
        if last == "_target_":  # only the target of an existing node
            node = target
        parent = job
        for part in parents:
            parent = parent[part]
        parent[last] = node

    return edit


CASES: dict[str, Case] = {
    "hydra-through-a-package": Case(
        _hydra_through_a_package,
        "chooses x@_global_='evil', a group with a package",
        choices={"x@_global_": "evil"},
    ),
    "root-hydra-node": Case(_root_hydra, "has a root `hydra` node"),
    "root-defaults": Case(_root_defaults, "has a root `defaults` node"),
    "group-defaults": Case(_group_defaults, "has a `defaults` list in its `model` node"),
    "foreign-group": Case(_foreign_group, "a group the runner does not own", choices={"evil": "x"}),
    # Case 3: allowed prefixes held functions that run code.
    "sklearn-runs-a-source-string": Case(
        _target(
            "model",
            "sklearn.utils._testing.assert_run_python_script_without_output",
            source_code="import pathlib; pathlib.Path('MARKER_PATH').write_text('pwned')",
        ),
        "not an estimator class",
    ),
    "runner-unpickles-its-arguments": Case(
        _target("model", "runner.sweeps.optuna._worker.run_trial_payload"),
        "outside the allow-list",
    ),
    "lifecycle-command-as-model": Case(
        _target(
            "model", "runner.lifecycle.main", argv=["prune-failed", "--older-than", "0s", "--yes"]
        ),
        "outside the allow-list",
    ),
    # Case 4: --dry-run instantiated the dataset (to digest it): a command in its place ran.
    # (Nested in the dataset node: Hydra instantiates it first, and the loader gets its int.)
    "lifecycle-command-in-dataset": Case(
        _target(
            "dataset.seed",
            "runner.lifecycle.main",
            argv=["prune-failed", "--older-than", "0s", "--yes"],
        ),
        "outside the allow-list",
    ),
    "compare-command-in-dataset": Case(
        _target("dataset.seed", "runner.compare.main", argv=["--html", "MARKER"]),
        "outside the allow-list",
    ),
    "loader-replaced-by-a-command": Case(
        _target("dataset._target_", "runner.lifecycle.main"),
        "not a dataset loader",
    ),
    "module-attribute-escape": Case(
        _target("model", "models.mlp.np.save", file="MARKER", arr=[1]),
        "numpy",
    ),
    "estimator-in-dataset-position": Case(
        _target("dataset._target_", "sklearn.dummy.DummyClassifier"),
        "not a dataset loader",
    ),
    "target-not-a-name": Case(
        _target("model", "ignored"),
        "not a dotted name",
    ),
    # Checked, then run: what runs is the checked object, so the marker never appears.
    "resolves-differently-at-run-time": Case(_resolves_twice, None, dry_refused=None),
}


def _materialize(case: Case, marker: Path) -> Callable[[dict[str, Any]], None]:
    def edit(job: dict[str, Any]) -> None:
        case.edit(job, marker)
        for node in job.values():
            if isinstance(node, dict) and "source_code" in node:
                node["source_code"] = node["source_code"].replace("MARKER_PATH", str(marker))
        if job.get("model", {}).get("_target_") == "ignored":
            job["model"]["_target_"] = {"_target_": f"{__name__}.pwn"}

    return edit


def _replay(store: Store, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = replay.main([*args, "--tracking-uri", store.uri])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_config_runs_nothing(
    store: Store,
    name: str,
    dry_run: bool,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    marker = workdir / MARKER
    crafted = craft(store, edit=_materialize(case, marker), choices=case.choices)
    before, active = store.run_ids(), store.active()
    monkeypatch.setenv("REPLAYER_SECRET", SECRET)
    code, _, err = _replay(
        store, crafted, *(["--dry-run"] if dry_run else []), *case.args, capsys=capsys
    )
    refused = case.dry_refused if dry_run else case.refused
    refused = case.refused if refused == "same" else refused
    assert not marker.exists(), f"{name}: the crafted target ran\n{err}"
    assert "Traceback" not in err, err
    assert store.active() >= active, "a run was deleted"
    if refused is not None:
        assert code == 2, err
        assert refused in err, err
        assert store.run_ids() == before, "a run was written"
    else:
        assert code == 0, err
        if not dry_run:
            (new,) = store.run_ids() - before
            assert store.client.get_run(new).info.status == "FINISHED"
    assert SECRET.encode() not in store_bytes(store)


# -- the replaying user's environment and files ---------------------------------------------


def test_environment_reached_through_interpolations_is_logged_as_its_reference(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Case 5: one interpolation hop copied the replaying user's secret into param `b`.
    def edit(job: dict[str, Any]) -> None:
        job["a"] = "${oc.env:REPLAYER_SECRET}"
        job["b"] = "${a}"
        job["c"] = {"d": "prefix-${b}"}
        job["e"] = "${oc.select:a}"

    crafted = craft(store, edit=edit)
    monkeypatch.setenv("REPLAYER_SECRET", SECRET)
    code, out, err = _replay(store, crafted, "--dry-run", capsys=capsys)
    assert code == 0, err
    assert SECRET not in out + err
    before = store.run_ids()
    code, out, err = _replay(store, crafted, capsys=capsys)
    assert code == 0, err
    (new,) = store.run_ids() - before
    params = store.client.get_run(new).data.params
    assert params["a"] == "${oc.env:REPLAYER_SECRET}"
    assert params["b"] == "${a}"
    assert SECRET not in out + err
    assert SECRET.encode() not in store_bytes(store)


def test_environment_echoed_by_an_error_message_never_reaches_the_store(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An allowed estimator whose argument validation quotes the value it got: the failing
    # job's runner.error tag would carry the replaying user's secret.
    def edit(job: dict[str, Any]) -> None:
        job["model"] = {
            "_target_": "sklearn.linear_model.LogisticRegression",
            "class_weight": "${oc.env:REPLAYER_SECRET}",
        }

    crafted = craft(store, edit=edit)
    monkeypatch.setenv("REPLAYER_SECRET", SECRET)
    before = store.run_ids()
    code, _, err = _replay(store, crafted, capsys=capsys)
    assert code == 1, err
    (new,) = store.run_ids() - before
    run = store.client.get_run(new)
    assert run.info.status == "FAILED"
    assert "class_weight" in run.data.tags["runner.error"]
    assert "***" in run.data.tags["runner.error"]
    assert SECRET.encode() not in store_bytes(store)


def test_autolog_with_environment_values_is_refused(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # MLflow's autolog logs an estimator's arguments itself, past the runner's masking.
    def edit(job: dict[str, Any]) -> None:
        job["tracking"]["autolog"] = True
        job["model"] = {
            "_target_": "sklearn.linear_model.LogisticRegression",
            "solver": "lbfgs",
            "tol": "${oc.decode:${oc.env:REPLAYER_NUMBER}}",
        }

    crafted = craft(store, edit=edit)
    monkeypatch.setenv("REPLAYER_NUMBER", "0.000123456789")
    before = store.run_ids()
    code, _, err = _replay(store, crafted, capsys=capsys)
    assert code == 2 and "tracking.autolog=false" in err, err
    assert store.run_ids() == before
    code, _, err = _replay(store, crafted, "tracking.autolog=false", capsys=capsys)
    assert code == 0, err
    assert b"0.000123456789" not in store_bytes(store)


def test_dataset_pointed_at_a_file_of_the_replayer_is_refused(
    store: Store,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import runner.data

    private = workdir / "private.csv"
    private.write_text(PRIVATE_HEADER + "\n" + "\n".join(f"{i},{i % 2}" for i in range(40)))

    def edit(job: dict[str, Any]) -> None:
        job["dataset"] = {
            "_target_": "runner.data.load_table",
            "name": "iris",
            "path": str(private),
            "target": "label",
            "task": "classification",
            "test_size": 0.25,
            "seed": 0,
        }

    calls: list[Any] = []
    real = runner.data.load_table

    @functools.wraps(real)
    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(runner.data, "load_table", spy)
    crafted = craft(store, edit=edit)
    before = store.run_ids()
    # --dry-run reads no data at all.
    code, _, err = _replay(store, crafted, "--dry-run", capsys=capsys)
    assert code == 0, err
    assert calls == [] and "no data was read" in err
    # The real replay reads it, sees another digest than the run's, and refuses.
    code, _out, err = _replay(store, crafted, capsys=capsys)
    digest = store.client.get_run(crafted).data.tags["runner.dataset_digest"]
    assert code == 2, err
    assert "refusing to replay" in err and digest in err and "--allow-changed-data" in err
    assert store.run_ids() == before
    assert b"private_col_W4n8" not in store_bytes(store)
    # Asked for, it runs on the changed data, with the warning.
    code, _, err = _replay(store, crafted, "--allow-changed-data", capsys=capsys)
    assert code == 0, err
    assert "the dataset differs" in err


def test_replay_of_other_data_needs_allow_changed_data(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _replay(store, store.source, "dataset=wine", capsys=capsys)
    assert code == 2 and "--allow-changed-data" in err, err
    no_digest = craft(store, tags={"runner.dataset_digest": ""})
    code, _, err = _replay(store, no_digest, capsys=capsys)
    assert code == 2 and "none recorded" in err, err


def test_wrong_type_targets_give_a_clear_error(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    # An allowed dataset target that returns something else than a Dataset.
    def as_dataset(job: dict[str, Any]) -> None:
        job["dataset"]["_target_"] = "builtins.dict"

    crafted = craft(store, edit=as_dataset)
    code, _, err = _replay(store, crafted, "--allow-target", "builtins", capsys=capsys)
    assert code == 2, err
    assert "not a runner.data.Dataset" in err and "Traceback" not in err

    # A model target that returns something without fit/predict: the job fails, clearly.
    def as_model(job: dict[str, Any]) -> None:
        job["model"] = {"_target_": "builtins.dict", "a": 1}

    crafted = craft(store, edit=as_model)
    before = store.run_ids()
    code, _, err = _replay(store, crafted, "--allow-target", "builtins", capsys=capsys)
    assert code == 1, err
    assert "Traceback" not in err and "AttributeError" not in err
    (new,) = store.run_ids() - before
    run = store.client.get_run(new)
    assert run.info.status == "FAILED"
    assert "no fit/predict" in run.data.tags["runner.error"]


# -- units ---------------------------------------------------------------------------------------


@given(st.text())
def test_frozen_config_resolves_to_exactly_what_was_checked(text: str) -> None:
    from omegaconf import OmegaConf

    from runner.replay.rebuild import frozen

    resolved = {"a": text, "b": [text, {"c": text}], "ref": 1}
    cfg = frozen(resolved)
    assert OmegaConf.to_container(cfg, resolve=True) == resolved


@pytest.mark.parametrize(
    ("where", "target", "ok"),
    [
        ("model._target_", "sklearn.ensemble.RandomForestClassifier", True),
        ("model._target_", "xgboost.XGBClassifier", True),
        ("model._target_", "models.linear.linear_model", True),
        ("model._target_", "models.mlp.MLPClassifier", True),
        ("model.estimator._target_", "sklearn.linear_model.LogisticRegression", True),
        ("dataset._target_", "runner.data.load_builtin", True),
        ("dataset._target_", "runner.data.load_table", True),
        ("model._target_", "sklearn.utils._testing.assert_run_python_script_without_output", False),
        ("model._target_", "sklearn.utils.estimator_checks.check_estimator", False),
        ("model._target_", "sklearn.base.clone", False),
        ("model._target_", "runner.data.load_table", False),
        ("model._target_", "runner.compare.main", False),
        ("model._target_", "runner.replay.main", False),
        ("model._target_", "xgboost.core.Booster", False),
        ("model._target_", "models.mlp.np.load", False),
        ("model._target_", "sklearnx.Evil", False),
        ("model._target_", "os.system", False),
        ("model._target_", "builtins.eval", False),
        ("dataset._target_", "runner.data.np.load", False),
        ("dataset._target_", "runner.data._read_builtin", False),
        ("dataset._target_", "runner.lifecycle.main", False),
        ("tracking._target_", "subprocess.run", False),
    ],
)
def test_allow_list_checks_the_object_found(where: str, target: str, ok: bool) -> None:
    from runner.replay.rebuild import UntrustedTargetError, allow_list, check_targets

    tree: dict[str, Any] = {}
    node = tree
    *parents, _ = where.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node["_target_"] = target
    if ok:
        check_targets(tree, allow_list(), run_id="r")
    else:
        with pytest.raises(UntrustedTargetError, match="refusing to replay run r"):
            check_targets(tree, allow_list(), run_id="r")
    assert os.environ.get("REPLAYER_SECRET") is None


_NAMES = st.text(alphabet="modelsw@_/.-xhyra", min_size=1, max_size=14)


@given(choices=st.dictionaries(_NAMES, _NAMES, max_size=4))
def test_crafted_choices_never_steer_hydra(choices: dict[str, str]) -> None:
    # Whatever a crafted hydra.yaml chooses, a rebuilt config dir either is refused or holds
    # only the runner's own groups, each file inside the dir, each node in its own package
    # (or an empty `_global_` one): no `hydra` node can reach the root.
    from runner.errors import ConfigError
    from runner.replay.rebuild import owned_groups, write_config_dir

    evil = {"hydra": {"callbacks": {"evil": {"_target_": f"{__name__}.pwn"}}}}
    job = {"model": {"a": 1}, "_global_": evil, "x": evil, "sweep": evil}
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp, "conf")
        dest.mkdir()
        try:
            write_config_dir(dest, job, choices, run_id="r")
        except ConfigError:
            return
        for path in dest.rglob("*.yaml"):
            assert dest.resolve() in path.resolve().parents
            if path.parent == dest:
                continue
            group = path.parent.relative_to(dest).as_posix()
            assert group.split("/")[0] in owned_groups()
            text = path.read_text()
            header = text.splitlines()[0]
            assert header in (f"# @package {group.replace('/', '.')}", "# @package _global_")
            if header.endswith("_global_"):
                assert yaml.safe_load(text) in (None, {})


@given(st.text())
def test_diff_never_sends_a_control_character_to_the_terminal(text: str) -> None:
    # A tag or param is a stranger's text: `\x1b[2J` in it must be shown, not acted on.
    from runner.diff import SECTIONS, render

    result: dict[str, Any] = {"a": "a", "b": "b", "sections": {n: [] for n in SECTIONS}}
    result["sections"]["params"] = [{"key": text, "a": text, "b": f"x{text}", "equal": False}]
    shown = render(result)
    assert not any((ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160 for c in shown)
