"""Pure pieces of the tracking layer: flattening, stringification, redaction, URIs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner.errors import TrackingError
from runner.tracking.params import MAX_KEY, MAX_VALUE, config_params, flatten, stringify
from runner.tracking.redact import (
    REDACTED,
    is_secret_key,
    redact_file,
    redact_override,
    redact_text,
)
from runner.tracking.store import resolve_uri
from tests.helpers import compose_cfg


def test_flatten_uses_dotted_paths_and_list_indices() -> None:
    got = dict(flatten({"a": {"b": 1, "c": [10, {"d": None}]}, "e": [], "f": {}}))
    assert got == {"a.b": 1, "a.c.0": 10, "a.c.1.d": None, "e": [], "f": {}}


def test_stringify_is_str_and_respects_mlflow_limits() -> None:
    assert [stringify(v) for v in (None, True, 0.1, 3, "x")] == ["None", "True", "0.1", "3", "x"]
    long = stringify("x" * 10_000)
    assert len(long) == MAX_VALUE and long.endswith("...")


def test_config_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TEST_SECRET", "s3cr3t")
    cfg = OmegaConf.create(
        {
            "lr": 0.1,
            "model": {"hidden": [64, 32], "name": "m"},
            "backend": {"uri": "http://u:pw@host"},
            "db": {"password": "hunter2", "token": "${oc.env:RUNNER_TEST_SECRET}"},
            "url": "postgresql://bob:pw@host/db",
            "home": "${oc.env:RUNNER_TEST_SECRET}",
            "k" * 300: 1,
        }
    )
    params = config_params(cfg, {"model": "mlp", "hydra/launcher": "basic", "backend": "x"})
    assert params["lr"] == "0.1"
    assert params["model.hidden.0"] == "64" and params["model.hidden.1"] == "32"
    assert params["model"] == "mlp"
    assert not any(k.startswith("backend") or k.startswith("hydra") for k in params)
    assert params["db.password"] == REDACTED
    assert params["db.token"] == "${oc.env:RUNNER_TEST_SECRET}"
    assert params["url"] == f"postgresql://bob:{REDACTED}@host/db"
    # An environment value never reaches the store, whatever its key: the reference does.
    assert params["home"] == "${oc.env:RUNNER_TEST_SECRET}"
    assert all(len(k) <= MAX_KEY for k in params)
    assert "s3cr3t" not in str(params) and "hunter2" not in str(params)


@pytest.mark.parametrize(
    "key",
    ["password", "db.password", "api_key", "AWS_SECRET_ACCESS_KEY", "hf_token", "credentials"],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["model.max_depth", "lr", "dataset.path", "model.n_estimators"])
def test_not_secret_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_override_and_text() -> None:
    assert redact_override("+db.password=hunter2") == f"+db.password={REDACTED}"
    assert redact_override("db.token=${oc.env:T}") == "db.token=${oc.env:T}"
    assert redact_override("lr=0.1") == "lr=0.1"
    assert redact_text("lr=0.1,db.password=x,seed=1") == f"lr=0.1,db.password={REDACTED},seed=1"


def test_redact_file(tmp_path: Path) -> None:
    f = tmp_path / "overrides.yaml"
    f.write_text(yaml.safe_dump(["lr=0.1", "+db.password=hunter2"]))
    assert redact_file(f)
    assert "hunter2" not in f.read_text()
    assert not redact_file(f)  # idempotent


def test_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert compose_cfg([]).backend.uri is None
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from_env.db")
    assert compose_cfg([]).backend.uri == "sqlite:///from_env.db"
    assert resolve_uri("sqlite:///from_env.db", tmp_path) == f"sqlite:///{tmp_path / 'from_env.db'}"
    cfg = compose_cfg(["backend.uri=http://127.0.0.1:5000"])
    assert cfg.backend.uri == "http://127.0.0.1:5000"


def test_file_store_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match=r"file-store path.*sqlite:///"):
        resolve_uri("./mlruns", tmp_path)
