"""No secret byte on disk: every leak seen in the wild, through the real CLI, and properties of
the redaction over generated secret shapes.

The CLI tests grep every byte (and every file name) under the launch directory: the SQLite
store, the artifacts beside it, ``outputs/``, ``multirun/`` and ``.runner/``; and what the
runner printed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from runner.tracking.params import config_params, public_config
from runner.tracking.redact import (
    REDACTED,
    is_secret_key,
    redact_file,
    redact_override,
    redact_text,
    redact_tree,
)
from tests.conftest import run_cli
from tests.helpers import compose_cfg, runs_of

#: Keeps a CLI job short: no model or figure artifacts.
FAST = ("tracking.log_model=false", "tracking.log_figures=false")


def leaks(root: Path, secrets: list[str], *outputs: str) -> list[str]:
    """Where any of ``secrets`` appears: file names, file bytes under ``root``, ``outputs``."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        found += [f"{s} in the name {rel}" for s in secrets if s in rel]
        if path.is_file():
            data = path.read_bytes()
            found += [f"{s} in {rel}" for s in secrets if s.encode() in data]
    for i, text in enumerate(outputs):
        found += [f"{s} in output {i}" for s in secrets if s in text]
    return found


# -- the corpus, through the CLI -----------------------------------------------------------
def test_keys_values_and_urls_of_a_run_leak_nothing(tracking_uri: str, workdir: Path) -> None:
    env = {"RUNNER_T_ENV1": "sEnvDirect", "RUNNER_T_ENV2": "sEnvChained"}
    proc = run_cli(
        *FAST,
        # Keys that were not matched.
        "+db.pass=sKeyPass",
        "+conn.passphrase=sKeyPhrase",
        "+http.bearer=sKeyBearer",
        "+svc.jwt=sKeyJwt",
        "+web.cookie=sKeyCookie",
        "+crypto.encryption_key=sKeyEnc",
        "+crypto.signingKey=sKeySigning",
        # A dict and a list value.
        "+dbx={user: u, password: sDictValue}",
        "+credentials=[a,sListValue]",
        # References: a default, the env value behind `+x=${oc.env:...}`, a chain.
        "+db.password=${oc.env:RUNNER_T_UNSET,sEnvDefault}",
        "+x=${oc.env:RUNNER_T_ENV1}",
        "+e.a=${oc.env:RUNNER_T_ENV2}",
        "+e.b=${e.a}",
        # URLs: a token-only userinfo, a password with `/` and `@`, a query credential.
        "+src.url=https://sUrlToken@example.com/repo.git",
        "+src.mirror='postgresql://bob:sUrlSlash/p@ss@db.example.com/x'",
        "+src.db='postgresql://db.example.com/x?user=bob&password=sUrlQuery'",
        env=env,
    )
    secrets = [
        *("sKeyPass", "sKeyPhrase", "sKeyBearer", "sKeyJwt", "sKeyCookie", "sKeyEnc"),
        *("sKeySigning", "sDictValue", "sListValue", "sEnvDefault", "sEnvDirect"),
        *("sEnvChained", "sUrlToken", "sUrlSlash", "sUrlQuery"),
    ]
    assert leaks(workdir, secrets, proc.stdout, proc.stderr) == []
    (run,) = runs_of(__import__("mlflow").tracking.MlflowClient(tracking_uri), "iris")
    p = run.data.params
    # References stay references (a replay resolves them from its own environment).
    assert p["x"] == "${oc.env:RUNNER_T_ENV1}" and p["e.a"] == "${oc.env:RUNNER_T_ENV2}"
    assert p["e.b"] == "${e.a}" and p["db.password"] == "${oc.env:RUNNER_T_UNSET,***}"
    assert p["dbx.password"] == p["credentials.1"] == p["crypto.signingKey"] == REDACTED
    assert p["dbx.user"] == "u" and p["src.url"] == "https://***@example.com/repo.git"
    assert "+x=${oc.env:RUNNER_T_ENV1}" in json.loads(run.data.tags["runner.overrides"])


def test_a_run_dir_named_after_its_overrides_leaks_nothing(
    tracking_uri: str, workdir: Path
) -> None:
    proc = run_cli(
        *FAST,
        "+dbx={user: u, password: sDirDict}",
        "+credentials=[a,sDirList]",
        "+db.password=sDirPlain",
        "+e.a=${oc.env:RUNNER_T_ENV}",
        "hydra.run.dir=outputs/${hydra.job.override_dirname}",
        env={"RUNNER_T_ENV": "sDirEnv"},
    )
    secrets = ["sDirDict", "sDirList", "sDirPlain", "sDirEnv"]
    assert leaks(workdir, secrets, proc.stdout, proc.stderr) == []
    (out,) = (workdir / "outputs").iterdir()
    assert "+db.password=***" in out.name and (out / ".hydra" / "config.yaml").is_file()
    (run,) = runs_of(__import__("mlflow").tracking.MlflowClient(tracking_uri), "iris")
    assert run.data.tags["runner.output_dir"] == str(out)


def test_a_grid_over_secrets_leaks_nothing(tracking_uri: str, workdir: Path) -> None:
    proc = run_cli(
        "-m",
        *FAST,
        "+db.password=sGrid1,sGrid2",
        "+dbx={user: u, password: sGridDict}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
    )
    assert leaks(workdir, ["sGrid1", "sGrid2", "sGridDict"], proc.stdout, proc.stderr) == []
    (sweep,) = (workdir / "multirun").glob("*/*")
    # The two jobs still have a folder each (a digest tells the redacted values apart).
    assert len([d for d in sweep.iterdir() if (d / ".hydra").is_dir()]) == 2
    runs = runs_of(__import__("mlflow").tracking.MlflowClient(tracking_uri), "iris")
    jobs = [r for r in runs if r.data.tags["runner.kind"] == "job"]
    assert [r.data.params["db.password"] for r in jobs] == [REDACTED, REDACTED]


def test_a_sweep_that_fails_before_its_first_job_leaks_nothing(
    tracking_uri: str, workdir: Path
) -> None:
    # multirun.yaml is written, then the batch's validation fails: no job ever starts.
    proc = run_cli(
        "-m", *FAST, "+db.password=sEarly1,sEarly2", "model=logreg,nonexistent", check=False
    )
    assert proc.returncode != 0
    assert list((workdir / "multirun").glob("*/*/multirun.yaml"))
    assert leaks(workdir, ["sEarly1", "sEarly2"], proc.stdout, proc.stderr) == []


def test_a_failing_job_leaks_nothing(tracking_uri: str, workdir: Path) -> None:
    proc = run_cli(
        *FAST,
        "dataset=csv",
        "dataset.path=https://bob:sCsvPassword@example.com/data.csv",
        "dataset.target=y",
        check=False,
    )
    assert proc.returncode != 0
    assert leaks(workdir, ["sCsvPassword"], proc.stdout, proc.stderr) == []
    (run,) = runs_of(__import__("mlflow").tracking.MlflowClient(tracking_uri), "csv")
    assert run.info.status == "FAILED"
    assert "https://bob:***@example.com/data.csv" in run.data.tags["runner.error"]


def test_a_replay_leaks_nothing(tracking_uri: str, workdir: Path) -> None:
    run_cli(*FAST)
    client = __import__("mlflow").tracking.MlflowClient(tracking_uri)
    (src,) = runs_of(client, "iris")
    # The README tells users to pass a secret to the replay as an override.
    proc = run_cli(
        src.info.run_id,
        "+db.password=sReplayPlain",
        "+dbx={user: u, password: sReplayDict}",
        module="runner.replay",
    )
    assert leaks(workdir, ["sReplayPlain", "sReplayDict"], proc.stdout, proc.stderr) == []
    new = next(r for r in runs_of(client, "iris") if r.info.run_id != src.info.run_id)
    assert "password" in new.data.tags["mlflow.note.content"]


def test_an_optuna_sweep_leaks_nothing(tracking_uri: str, workdir: Path) -> None:
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        *FAST,
        "model.C=interval(0.1,1)",
        "+db.password=sOptunaFixed",
        "++dbx={user: u, password: sOptunaDict}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",
    )
    assert leaks(workdir, ["sOptunaFixed", "sOptunaDict"], proc.stdout, proc.stderr) == []
    assert list((workdir / "multirun").glob("*/*/optimization_results.yaml"))


# -- generated shapes, through the CLI -----------------------------------------------------
_SECRET = st.from_regex(r"sGen[A-Z][a-z]{3}[0-9]{4}", fullmatch=True)
_SECRET_LEAF = st.sampled_from(
    [
        "password", "pass", "passwd", "pwd", "passphrase", "passcode", "secret", "token",
        "api_key", "apiKey", "bearer", "jwt", "cookie", "encryption_key", "signing_key",
        "secret_key", "private_key", "credentials", "auth_token", "client_secret",
        "access_token", "hf_token", "AWS_SECRET_ACCESS_KEY", "webhook_url", "otp", "sig",
        "key", "dbpassword", "masterKey", "DB_PASS", "authorization", "session_token",
    ]
)  # fmt: skip
_PARENT = st.lists(st.sampled_from(["db", "svc", "a", "cfg_1", "conn"]), max_size=2)
_PLAIN_KEY = st.sampled_from(["user", "host", "endpoint", "url", "mode"])


@st.composite
def secret_shapes(draw: st.DrawFn) -> tuple[str, str, str]:
    """``(kind, override, secret)``: an override holding ``secret`` in one of the shapes seen."""
    secret = draw(_SECRET)
    path = ".".join([*draw(_PARENT), draw(_SECRET_LEAF)])
    plain = ".".join([*draw(_PARENT), draw(_PLAIN_KEY)]) or "x"
    scheme = draw(st.sampled_from(["https", "postgresql", "s3", "redis"]))
    kind = draw(
        st.sampled_from(
            ["scalar", "list", "dict", "nested", "env_default", "url", "token_url", "odd_url",
             "query_url", "env_name_default", "grid"]
        )
    )  # fmt: skip
    leaf = path.split(".")[-1]
    override = {
        "scalar": f"+{path}={secret}",
        "list": f"+{path}=[a,{secret}]",
        "dict": f"+{path}={{user: u, pw: {secret}}}",
        "nested": f"+{plain}={{user: u, {leaf}: {secret}}}",
        "env_default": f"+{path}=${{oc.env:RUNNER_T_UNSET,{secret}}}",
        "url": f"+{plain}='{scheme}://bob:{secret}@host.example.com/x'",
        "token_url": f"+{plain}='{scheme}://{secret}@host.example.com/x'",
        "odd_url": f"+{plain}='{scheme}://bob:pa/{secret}@w@host.example.com/x'",
        "query_url": f"+{plain}='{scheme}://host.example.com/x?u=1&{leaf}={secret}'",
        "env_name_default": f"+{plain}=${{oc.env:RUNNER_T_DB_PASSWORD,{secret}}}",
        "grid": f"+{path}=g1,{secret}",
    }[kind]
    return kind, override, secret


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(shape=secret_shapes(), failing=st.booleans(), env_secret=_SECRET)
# Found by this test: in a grid, Hydra writes the job's overrides with escaped colons
# (`dataset.path=https\://u\:SECRET@h/...` in overrides.yaml, hydra.yaml, the dir name).
@example(
    shape=("grid", "+password=g1,sGenAaaa0000", "sGenAaaa0000"),
    failing=True,
    env_secret="sEnvAaaa0000",
)
def test_generated_secrets_leak_nothing_from_the_cli(
    shape: tuple[str, str, str], failing: bool, env_secret: str, _template_db: Path
) -> None:
    kind, override, secret = shape
    with tempfile.TemporaryDirectory(prefix="runner-secrets-") as tmp:
        root = Path(tmp)
        shutil.copy(_template_db, root / "mlflow.db")
        args = [*FAST, override, "+e.a=${oc.env:RUNNER_T_ENV}", "+e.b=${e.a}"]
        args.append("hydra.sweep.subdir=${hydra.job.override_dirname}")
        if kind == "grid":
            args.insert(0, "-m")
        else:
            args.append("hydra.run.dir=outputs/${hydra.job.override_dirname}")
        if failing:  # the job fails with the secret in its message
            args += ["dataset=csv", f"dataset.path=https://u:{secret}@h.example.com/d.csv"]
            args.append("dataset.target=y")
        env = {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "RUNNER_T_ENV": env_secret,
        }
        proc = run_cli(*args, cwd=root, env=env, check=False)
        assert (proc.returncode != 0) == failing, proc.stdout + proc.stderr
        assert leaks(root, [secret, env_secret], proc.stdout, proc.stderr) == []


# -- the redaction's pieces ----------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "db.pass", "passphrase", "x.bearer", "jwt", "session_cookie", "encryption_key",
        "signing_key", "secret_key", "masterKey", "APIKey", "aws.key", "key", "dbpass",
        "hf_token", "accessToken", "authorization", "oauth2", "webhook_url", "x.0.api_key",
        "AWS_SECRET_ACCESS_KEY", "credentials", "creds", "otp", "sig", "client_secret",
    ],
)  # fmt: skip
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "model.n_estimators", "max_depth", "lr", "dataset.name", "keyboard", "keyword",
        "passes", "n_pass", "bypass", "high_pass", "sort_key", "exclude_keys", "feature_keys",
        "monkey", "tokenizer", "pad_token", "max_new_tokens", "author", "authors",
        "hydra.job.config.override_dirname.kv_sep", "model.C", "seed", "sort.key",
    ],
)  # fmt: skip
def test_not_secret_keys(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+db.pass=p", "+db.pass=***"),
        ("+dbx={user: u, password: p}", "+dbx={user:u,password:***}"),
        ("+credentials=[a,b]", "+credentials=[***,***]"),
        ("+db.password=s1,s2", "+db.password=***"),
        ("db.password=choice(s1,s2)", "db.password=***"),
        ("+dbx={password: a},{password: b}", "+dbx={password:***},{password:***}"),
        ("+db.password=${oc.env:PW}", "+db.password=${oc.env:PW}"),
        ("+db.password=${oc.env:PW,p}", "+db.password=${oc.env:PW,***}"),
        ("+x=${oc.env:DB_PASSWORD,p}", "+x=${oc.env:DB_PASSWORD,***}"),
        ("+x=${oc.env:HOME,/tmp}", "+x=${oc.env:HOME,/tmp}"),
        ("+db.password=${db.other}", "+db.password=${db.other}"),
        ("+db.password=pre${oc.env:X}p", "+db.password=***"),
        ("+u=https://bob:p@h/x", "+u='https://bob:***@h/x'"),
        ("~db.password", "~db.password"),
        ("model.n_estimators=5", "model.n_estimators=5"),
        ("lr=0.01,0.1", "lr=0.01,0.1"),
        ("model=xgb", "model=xgb"),
    ],
)
def test_redact_override(override: str, expected: str) -> None:
    assert redact_override(override) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://tok@host/x", "https://***@host/x"),
        ("postgresql://bob:pa/ss@w@db.host:5432/x", "postgresql://bob:***@db.host:5432/x"),
        ("pg://h/db?user=bob&password=p&ssl=1", "pg://h/db?user=bob&password=***&ssl=1"),
        ("lr=0.1,db.password=s1,s2,seed=1", "lr=0.1,db.password=***,seed=1"),
        ("{'user': 'u', 'password': 'p'}", "{'user': 'u', 'password': '***'}"),
        ('{"db.password": 5}', '{"db.password": "***"}'),
        ('["+dbx={user: u, password: p}"]', '["+dbx={user: u, password: ***}"]'),
        ("`+db.password=p`", "`+db.password=***`"),
        ("password: ${oc.env:PW,p}", "password: ${oc.env:PW,***}"),
        ("x ${oc.env:API_TOKEN,p} y", "x ${oc.env:API_TOKEN,***} y"),
        ("AccountName=a;AccountKey=p;", "AccountName=a;AccountKey=***;"),
        ("resolved to /tmp/https:/bob:p@h/x.csv", "resolved to /tmp/https:/bob:***@h/x.csv"),
        ("ssh://git@github.com/o/r", "ssh://git@github.com/o/r"),
        ("https://registry.example/@scope/pkg", "https://registry.example/@scope/pkg"),
        ("pw https://u:${oc.env:PW}@h/db", "pw https://u:${oc.env:PW}@h/db"),
        ("Bearer abcdef123456", "Bearer ***"),
        ("got ghp_" + "a" * 36, "got ***"),
        ("lr=0.1 model=xgb", "lr=0.1 model=xgb"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # idempotent


def test_a_leaf_reaching_the_environment_or_a_secret_is_logged_as_its_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNNER_T_ENV", "sEnvValue")
    cfg = OmegaConf.create(
        {
            "a": "${oc.env:RUNNER_T_ENV}",
            "b": "${a}",
            "c": {"d": "${b}", "e": "x-${b}"},
            "db": {"password": "sPlain", "user": "u"},
            "f": "${db}",
            "g": "${db.password}",
            "url": "postgresql://u:${db.password}@h/x",
            "lr": 0.1,
            "m": {"lr": "${lr}"},
        }
    )
    public = public_config(cfg)
    assert public["b"] == "${a}" and public["c"] == {"d": "${b}", "e": "x-${b}"}
    assert public["f"] == {"password": "${db.password}", "user": "u"}
    assert public["g"] == "${db.password}" and public["url"] == "postgresql://u:${db.password}@h/x"
    assert public["m"] == {"lr": 0.1}  # a plain value resolves as before
    params = config_params(cfg)
    assert "sEnvValue" not in str(params) and "sPlain" not in str(params)


def test_redact_file_recomputes_a_sweeps_override_dirname(tmp_path: Path) -> None:
    doc = {
        "db": {"x": 1},
        "hydra": {
            "overrides": {"task": ["+db.password=s1,s2", "lr=0.1"], "hydra": []},
            "sweeper": {"params": {"db.token": "t1,t2"}},
            "job": {
                "override_dirname": "+db.password=s1,s2,lr=0.1",
                "config": {"override_dirname": {"kv_sep": "=", "exclude_keys": []}},
            },
        },
    }  # fmt: skip
    path = tmp_path / "multirun.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert redact_file(path) and not redact_file(path)
    text = path.read_text()
    assert all(s not in text for s in ("s1", "s2", "t1", "t2")), text
    hydra = yaml.safe_load(text)["hydra"]
    assert hydra["overrides"]["task"] == ["+db.password=***", "lr=0.1"]
    assert hydra["job"]["override_dirname"].startswith("+db.password=***#")


def test_redact_job_dirname() -> None:
    from runner.tracking.redact import redact_job_dirname

    cfg = compose_cfg(["+db.password=hunter2", "lr=0.2"], hydra=True)
    assert redact_job_dirname(cfg)
    assert cfg.hydra.job.override_dirname.startswith("+db.password=***#")
    assert cfg.hydra.job.override_dirname.endswith(",lr=0.2")
    plain = compose_cfg(["lr=0.2"], hydra=True)
    assert not redact_job_dirname(plain) and plain.hydra.job.override_dirname == "lr=0.2"


def test_the_store_redacts_every_write(tracking_uri: str, workdir: Path) -> None:
    """Whoever builds a name, tag, param or file, the store redacts it on the way in."""
    from runner.tracking.store import Store

    store = Store(tracking_uri)
    exp = store.experiment_id("chokepoint")
    run_id = store.create_run(
        exp,
        name="sweep +dbx={user: u, password: sName}",
        tags={
            "mlflow.note.content": "New overrides: `+db.password=sNote`.",
            "best.db.password": "sBest",
        },
    )
    store.log_batch(
        run_id,
        params={"db.password": "sParam", "src": "https://sToken@h.example.com/x"},
        tags={"runner.error": "DataError: https://bob:sError@h.example.com/d.csv"},
    )
    store.set_tag(run_id, "runner.best_params", json.dumps({"db.token": "sJson"}))
    store.log_files(
        run_id,
        {
            "config.yaml": "db:\n  password: sYaml\ncredentials:\n- sYamlList\n",
            "notes.txt": "token=sText and postgresql://u:sTextUrl@h/x",
            "notes.bin": b"api_key=sBytes",
        },
    )
    store.end_run(run_id, "FINISHED")
    secrets = ["sName", "sNote", "sBest", "sParam", "sToken", "sError", "sJson", "sYaml"]
    secrets += ["sYamlList", "sText", "sTextUrl", "sBytes"]
    assert leaks(workdir, secrets) == []
    run = store.client.get_run(run_id)
    assert json.loads(run.data.tags["runner.best_params"]) == {"db.token": REDACTED}


def test_credentials_in_a_uri_query_are_refused() -> None:
    from runner.errors import ConfigError
    from runner.tracking.backends import check_no_credentials

    node = OmegaConf.create({"uri": "postgresql://h/db?user=bob&password=sQuery"})
    with pytest.raises(ConfigError, match="credentials") as e:
        check_no_credentials(node)
    assert "sQuery" not in str(e.value)


def test_log_lines_and_errors_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    from runner.tracking.redact import install_log_redaction, redact_exception

    factory = logging.getLogRecordFactory()
    install_log_redaction()
    log = logging.getLogger("runner.test_secrets")
    try:
        raise ValueError("cannot read https://bob:sTrace@h.example.com/x")
    except ValueError:
        with caplog.at_level(logging.INFO):
            log.exception("job overrides: %s", ["+db.password=sMessage"])
    finally:
        logging.setLogRecordFactory(factory)
    record = caplog.records[-1]
    assert "sMessage" not in record.getMessage() and "sTrace" not in (record.exc_text or "")
    error = RuntimeError("wrapping")
    error.__cause__ = OSError(2, "no file", "https://u:sOs@h/x")
    redact_exception(error)
    assert "sOs" not in str(error.__cause__)


# -- properties ----------------------------------------------------------------------------
@st.composite
def config_shapes(draw: st.DrawFn, secret: str) -> dict[str, Any]:
    """A config tree holding ``secret`` under a secret key, at some depth, in some container."""
    path = [*draw(_PARENT), draw(_SECRET_LEAF)]
    value: Any = draw(
        st.sampled_from(
            [secret, [1, secret], {"user": "u", "v": secret}, [{"v": secret}],
             f"${{oc.env:RUNNER_T_UNSET,{secret}}}"]
        )
    )  # fmt: skip
    for key in reversed(path):
        value = {key: value}
    return value  # type: ignore[no-any-return]


@settings(max_examples=400, deadline=None)
@given(shape=secret_shapes())
def test_no_override_shape_keeps_its_secret(shape: tuple[str, str, str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.tracking.redact import redact_dirname, redact_yaml_text

    kind, override, secret = shape
    redacted = redact_override(override)
    assert secret not in redacted, (kind, override, redacted)
    OverridesParser.create().parse_override(redacted)  # still an override Hydra reads
    # The same override as free text, in a dirname, and in Hydra's own files.
    for text in (override, f"error: overrides {[override]}", json.dumps([override])):
        assert secret not in redact_text(text), (kind, text, redact_text(text))
    plain = ",".join(sorted([override, "lr=0.1"]))
    assert secret not in redact_dirname([override, "lr=0.1"])
    hydra_yaml = yaml.safe_dump(
        {
            "hydra": {
                "overrides": {"task": [override, "lr=0.1"]},
                "job": {"override_dirname": plain},
            }
        }
    )
    assert secret not in redact_yaml_text(hydra_yaml)
    assert secret not in redact_yaml_text(yaml.safe_dump([override]))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), secret=_SECRET)
def test_no_config_shape_keeps_its_secret(data: st.DataObject, secret: str) -> None:
    from runner.tracking.redact import redact_yaml_text

    tree = data.draw(config_shapes(secret))
    assert secret not in yaml.safe_dump(redact_tree(tree))
    assert secret not in redact_yaml_text(yaml.safe_dump(tree))
    assert secret not in str(config_params(OmegaConf.create(tree)))
    # Free text holding the tree: a Python repr and JSON (one level of nesting per value).
    flat = {".".join(p): v for p, v in _leaves(tree)}
    for text in (str(flat), json.dumps(flat)):
        assert secret not in redact_text(text), text


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict) and all(not isinstance(v, dict | list) for v in tree.values()):
        return [(path, tree)] if path else [((k,), v) for k, v in tree.items()]
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, (*path, str(k)))]
    return [(path, tree)]


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(
        ["model.n_estimators", "max_depth", "lr", "dataset.name", "keyboard", "passes",
         "sort_key", "tokenizer", "pad_token", "author", "model.C", "seed", "x.monkey"]
    ),
    value=st.one_of(
        st.integers(-1000, 1000),
        st.floats(0.001, 100, allow_nan=False).map(lambda f: round(f, 4)),
        st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
    ),
)  # fmt: skip
def test_plain_keys_and_values_are_left_alone(key: str, value: Any) -> None:
    override = f"{key}={value}"
    assert redact_override(override) == override
    tree = OmegaConf.to_container(OmegaConf.from_dotlist([override]))
    assert redact_tree(tree) == tree


def test_env_values_never_reach_params_through_a_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    os.environ.pop("RUNNER_T_UNSET", None)
    monkeypatch.setenv("RUNNER_T_CHAIN", "sChainValue")
    cfg = OmegaConf.create(
        {"a": "${oc.env:RUNNER_T_CHAIN}", "b": "${a}", "c": "${b}", "d": {"e": ["${c}"]}}
    )
    params = config_params(cfg)
    assert params == {"a": "${oc.env:RUNNER_T_CHAIN}", "b": "${a}", "c": "${b}", "d.e.0": "${c}"}


@pytest.mark.parametrize(
    "text",
    [
        "wandb_blob=sBlobAaaa0000 other=1",
        '{"run": {"wandb_blob": "sBlobAaaa0000"}}',
        "ValueError: bad value for cfg.wandb_blob: sBlobAaaa0000",
        "overrides: [+svc.wandb_blob=sBlobAaaa0000]",
    ],
)
def test_secret_keys_of_the_callback_reach_free_text(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``secret_keys`` pattern (a key with none of the built-in hint words) is masked in
    free text too: log lines, error tags, JSON, not only in params and config files."""
    from runner.tracking import _redact_core

    monkeypatch.setattr(_redact_core, "_EXTRA_KEYS", [])  # process-global: undone after
    assert "sBlobAaaa0000" in redact_text(text)
    assert not _redact_core.might_hold_secret(text)
    _redact_core.add_secret_keys(["wandb_blob"])
    assert "sBlobAaaa0000" not in redact_text(text)
    assert _redact_core.might_hold_secret(text)
