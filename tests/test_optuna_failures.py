"""How an Optuna sweep fails: interrupted workers, a trial's traceback, every trial failing.

Real CLI runs in subprocesses (``python -m runner`` and a plain Hydra app), 2 trials each.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli, run_python

FAST = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")

#: A model whose trial 0 sends SIGTERM to the sweep's whole process group (as a batch
#: scheduler or ``kill -- -PGID`` does) once trial 1 has ended: one worker is then inside
#: its job, the other waits in the pool's queue.
STOPPER = """\
import os
import signal
import time

from sklearn.linear_model import LogisticRegression

from runner import trial


def make(task, **kwargs):
    return Stopper(**kwargs)


class Stopper(LogisticRegression):
    def fit(self, X, y, **kwargs):
        handle = trial.current()
        if handle.number == 0:
            import optuna

            ref = handle.ref
            study = optuna.load_study(study_name=ref.study_name, storage=ref.storage)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not study.get_trials(
                states=[optuna.trial.TrialState.COMPLETE]
            ):
                time.sleep(0.1)
            time.sleep(0.5)  # trial 1's worker is back in the pool's queue
            os.killpg(0, signal.SIGTERM)
            time.sleep(60)
        return super().fit(X, y, **kwargs)
"""


def _env(workdir: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(workdir), os.environ.get("PYTHONPATH")) if p)
    }


def test_sigterm_to_the_process_group_stops_workers_quietly(
    workdir: Path, tracking_uri: str
) -> None:
    """Each worker gets the group's SIGTERM and then the sweep's own: no traceback."""
    (workdir / "stopper.py").write_text(STOPPER)
    args = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    args += ["hydra/sweeper/sampler=random", "model._target_=stopper.make", *FAST]
    proc = run_python(
        ["-m", "runner", "-m", *args],
        cwd=workdir,
        env=_env(workdir),
        timeout=120,
        check=False,
        start_new_session=True,  # the group signalled is the sweep's alone
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "KeyboardInterrupt" not in out, out
    assert out.count("interrupted: open runs were ended as KILLED") == 1, out


APP = """\
import hydra


def check(x):
    if x > -10:
        raise ValueError(f"x={x} is not allowed")  # the user's line


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    check(cfg.x)
    return cfg.x


if __name__ == "__main__":
    main()
"""


def _plain_app(workdir: Path, n_jobs: int) -> None:
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            defaults:
              - override hydra/sweeper: optuna
            x: 0.0
            hydra:
              sweeper:
                direction: minimize
                n_trials: 2
                n_jobs: {n_jobs}
                storage: null
                max_failure_rate: 1.0
                sampler:
                  seed: 123
                params:
                  x: interval(-2.0, 2.0)
            """
        )
    )
    (workdir / "app.py").write_text(APP)


def test_worker_traceback_names_the_users_file(workdir: Path) -> None:
    """A trial run in a worker shows the app's own file and lines, not <dynamic-code>."""
    _plain_app(workdir, n_jobs=2)
    proc = run_python(
        ["app.py", "-m"], cwd=workdir, env={"PYTHONPATH": str(ROOT)}, timeout=120, check=False
    )
    out = proc.stdout + proc.stderr
    assert "<dynamic-code>" not in out, out
    app = workdir / "app.py"
    assert f'File "{app}", line 11, in main' in out, out
    assert f'File "{app}", line 6, in check' in out, out
    assert "# the user's line" in out, out  # the source line is shown too


def test_worker_traceback_names_runner_main(workdir: Path) -> None:
    """``python -m runner``: the task function of runner/__main__.py, by its file."""
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.max_failure_rate=1.0",
        "model.C=choice(-1.0, -2.0)",
        "backend=none",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert "<dynamic-code>" not in out, out
    assert f'File "{ROOT / "runner" / "__main__.py"}", line' in out, out


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_every_trial_failing_is_an_error(workdir: Path, n_jobs: int) -> None:
    """max_failure_rate=1.0 and no trial completing: results file, summary, exit 1."""
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.n_jobs={n_jobs}",
        "hydra.sweeper.max_failure_rate=1.0",
        "model.C=choice(-1.0, -2.0)",  # scikit-learn rejects C <= 0: every trial fails
        "backend=none",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "all 2 trials failed; the first error was (trial 0): ConfigError" in out, out
    assert "s, 2 trials (2 failed)\n  no trial completed" in out, out
    (path,) = workdir.glob("multirun/*/*/optimization_results.yaml")
    results = yaml.safe_load(path.read_text())
    assert results == {
        "name": "optuna",
        "message": "no trial completed (of 2)",
        "best_params": None,
        "best_value": None,
    }


SWEEP = """\
import sys

from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path


def task(cfg):
    return cfg.x


if __name__ == "__main__":
    path = create_config_search_path(sys.argv[1])
    hydra = Hydra.create_main_hydra2(task_name="app", config_search_path=path)
    ret = hydra.multirun(config_name="config", task_function=task, overrides=[])
    print("RETURNED", repr(ret))
"""


def test_sweep_returns_none_as_the_official_plugin(workdir: Path) -> None:
    """Hydra's multirun returns what the sweeper's sweep() returns: None, as upstream."""
    _plain_app(workdir, n_jobs=1)
    (workdir / "sweep.py").write_text(SWEEP)
    proc = run_python(
        ["sweep.py", str(workdir / "conf")],
        cwd=workdir,
        env={"PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "RETURNED None" in out, out
    assert yaml.safe_load(next(workdir.glob("multirun/*/*/optimization_results.yaml")).read_text())
