"""``hydra.sweeper.n_jobs`` workers are forks of a forkserver that imported what a trial needs.

The real CLI in a subprocess, a real SQLite store and study; a model of the test's own
records, inside each trial, what its worker process looks like.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import run_cli

FAST = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")

#: A logreg that writes, from inside each trial, its worker's parentage, what was already
#: imported when the worker imported this module (init_worker) and its blocked signals.
PROBE = """\
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from sklearn.linear_model import LogisticRegression

PRELOADED = {m: m in sys.modules for m in ("sklearn.metrics", "mlflow", "runner.app")}


def make(task, **kwargs):
    return Probe(**kwargs)


class Probe(LogisticRegression):
    def fit(self, X, y, **kwargs):
        ppid = os.getppid()
        cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
        record = {
            "ppid": ppid,
            "parent_cmdline": cmdline,
            "sweep": multiprocessing.parent_process().pid,
            "preloaded": PRELOADED,
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        }
        out = Path(os.environ["PROBE_DIR"], f"{os.getpid()}.json")
        out.write_text(json.dumps(record))
        return super().fit(X, y, **kwargs)
"""


def test_workers_fork_from_a_preloaded_server(workdir: Path, tracking_uri: str) -> None:
    (workdir / "probe.py").write_text(PROBE)
    probes = workdir / "probes"
    probes.mkdir()
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    run_cli(
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
        "model.C=tag(log, interval(0.01, 10))", "model._target_=probe.make", *FAST,
        env={"PYTHONPATH": path, "PROBE_DIR": str(probes)},
    )  # fmt: skip
    records = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    assert len(records) == 2, records  # two workers ran the four trials
    (server,) = {r["ppid"] for r in records}  # both forked by one server ...
    (sweep,) = {r["sweep"] for r in records}
    assert server != sweep, records  # ... which is not the sweep process
    assert all("forkserver" in r["parent_cmdline"] for r in records), records
    # What every trial imports was there before the worker imported the job's own module.
    assert all(all(r["preloaded"].values()) for r in records), records
    # SIGINT and SIGTERM were blocked while the server started; a worker unblocks them.
    assert all(r["blocked"] == [] for r in records), records
