"""Backend configs, credential refusal, server planning, launchers, docker-compose: no services."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from runner.config import register
from runner.errors import ConfigError, TrackingError
from runner.tracking.backends import backend_of
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def _compose(*overrides: str, hydra: bool = False):  # type: ignore[no-untyped-def]
    register()
    with initialize_config_module(config_module="runner.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("name", ["local", "none", "server", "postgres_s3"])
def test_every_backend_composes(name: str, workdir: Path) -> None:
    backend = backend_of(_compose(f"backend={name}"), workdir)
    assert backend.name == name
    assert backend.enabled is (name != "none")


def test_backend_uris(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_of(_compose(), workdir).uri == f"sqlite:///{workdir / 'mlflow.db'}"
    server = backend_of(_compose("backend=server"), workdir)
    assert server.uri == "http://127.0.0.1:5000"
    for var, value in {"PGHOST": "db.example", "PGPORT": "6543", "PGUSER": "alice",
                       "PGDATABASE": "runs", "RUNNER_S3_BUCKET": "team"}.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    pg = backend_of(_compose("backend=postgres_s3"), workdir)
    assert pg.uri == "postgresql+psycopg://alice@db.example:6543/runs"
    assert pg.artifact_root == "s3://team/artifacts"


@pytest.mark.parametrize(
    "override",
    [
        "backend.uri=http://alice:hunter2@127.0.0.1:5000",
        "backend.uri=http://alice@127.0.0.1:5000",
        "+backend.password=hunter2",
        "+backend.token=abc",
    ],
)
def test_server_config_with_credentials_is_refused(override: str, workdir: Path) -> None:
    with pytest.raises(ConfigError, match="credential") as info:
        backend_of(_compose("backend=server", override), workdir)
    assert "hunter2" not in str(info.value)
    assert "MLFLOW_TRACKING_USERNAME" in str(info.value)


def test_postgres_password_in_uri_is_refused(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        backend_of(
            _compose("backend=postgres_s3", "backend.uri=postgresql+psycopg://u:pw@h:5432/db"),
            workdir,
        )


def test_backend_node_is_never_a_param() -> None:
    from runner.tracking.params import config_params

    params = config_params(_compose("backend=postgres_s3"), {"backend": "postgres_s3"})
    assert not any(k == "backend" or k.startswith("backend.") for k in params)
    assert params["tracking.on_unavailable"] == "fail"


def test_unreachable_server_fails_fast_naming_the_uri() -> None:
    from runner.tracking.store import check_reachable

    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        check_reachable(uri)
    assert time.monotonic() - start < 5


# -- runner.server planning (no server started) ---------------------------------------------


def test_server_refuses_public_bind_without_auth(capsys: pytest.CaptureFixture[str]) -> None:
    from runner import server

    assert server.main(["--host", "0.0.0.0"]) == 2
    assert "--auth" in capsys.readouterr().err
    p = server.plan([], host="0.0.0.0", insecure_public=True)
    assert p.host == "0.0.0.0"


def test_server_refuses_client_backends(capsys: pytest.CaptureFixture[str]) -> None:
    from runner import server

    assert server.main(["backend=server"]) == 2
    assert "cannot be served" in capsys.readouterr().err


def test_server_auth_needs_admin_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import server

    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    assert server.main(["--auth"]) == 2
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in capsys.readouterr().err


def test_server_plan_local_and_postgres(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import server

    p = server.plan([], port=5123)
    assert p.store_uri == f"sqlite:///{workdir / 'mlflow.db'}"
    assert p.artifacts_destination == str(workdir / "mlartifacts")
    cmd = " ".join(p.command)
    assert "--workers 1" in cmd and "--port 5123" in cmd and "--host 127.0.0.1" in cmd
    assert "basic-auth" not in cmd
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "x" * 16)
    p = server.plan(["backend=postgres_s3"], auth=True)
    assert p.store_uri.startswith("postgresql+psycopg://")
    assert p.artifacts_destination == "s3://mlflow/artifacts"
    assert "--app-name basic-auth" in " ".join(p.command)
    ini = Path(p.env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert "x" * 16 not in ini  # the admin password stays in the environment


# -- launchers ---------------------------------------------------------------------------------


def test_joblib_launcher_composes() -> None:
    cfg = _compose("hydra/launcher=joblib", "hydra.launcher.n_jobs=4", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 4
    assert "runner.tracking.callback.MLflowCallback" in str(cfg.hydra.callbacks)


def test_slurm_preset_composes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PARTITION", "cpu")
    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.timeout_min=240", hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert cfg.hydra.launcher.partition == "cpu"
    assert cfg.hydra.launcher.timeout_min == 240
    assert cfg.hydra.launcher.cpus_per_task == 4
    assert str(launcher["submitit_folder"]).startswith("${hydra.sweep.dir}")


# -- docker-compose.yml -------------------------------------------------------------------------


def test_docker_compose_matches_backend_configs(workdir: Path) -> None:
    compose_file = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose_file["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    pg_cfg = _compose("backend=postgres_s3").backend
    server_cfg = backend_of(_compose("backend=server"), workdir)

    pg = services["postgres"]
    assert f"{pg_cfg.db.port}:5432" in pg["ports"]
    assert pg["environment"]["POSTGRES_USER"] == pg_cfg.db.user
    assert pg["environment"]["POSTGRES_DB"] == pg_cfg.db.database

    mlflow = services["mlflow"]
    server_port = server_cfg.uri.rsplit(":", 1)[1]
    assert f"{server_port}:{server_port}" in mlflow["ports"]
    command = mlflow["entrypoint"]
    store = f"postgresql+psycopg://{pg_cfg.db.user}@postgres:5432/{pg_cfg.db.database}"
    assert f"--backend-store-uri {store}" in command
    # The artifact root of the config, with the bucket variable it reads.
    raw_root = OmegaConf.to_container(pg_cfg, resolve=False)["artifact_root"]
    assert raw_root == "s3://${oc.env:RUNNER_S3_BUCKET,mlflow}/artifacts"
    assert "--artifacts-destination s3://$$RUNNER_S3_BUCKET/artifacts" in command
    assert "--port 5000" in command and "--app-name basic-auth" in command
    env = mlflow["environment"]
    for var in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "RUNNER_S3_BUCKET"):  # fmt: skip
        assert var in env, var
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "9000:9000" in services["minio"]["ports"]
    assert env["RUNNER_S3_BUCKET"] == "${RUNNER_S3_BUCKET:-mlflow}"
    # Every variable postgres_s3.yaml reads is documented, with the compose stack, in the
    # README or the docs/ pages it links (the backend reference moved to docs/backends.md).
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    for var in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "RUNNER_S3_BUCKET",
                "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):  # fmt: skip
        assert var in readme, var
