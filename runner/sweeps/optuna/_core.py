"""The sweep loop: ask a trial, run its Hydra job, tell the result; resume, prune, stop."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from runner import contract, interrupts
from runner.errors import RunnerError
from runner.sweeps.composer import JobComposer
from runner.sweeps.optuna import setup
from runner.sweeps.optuna import storage as st
from runner.sweeps.optuna.progress import Progress
from runner.sweeps.optuna.space import SearchSpace, format_value, legacy_params, parse_space
from runner.trial import Outcome, TrialHandle, TrialRef

__all__ = ["OptunaSweep", "SweepError", "WorkerTask"]

log = logging.getLogger("runner.optuna_sweep")

#: How long an interrupted launching process waits for its worker jobs on this host to
#: void their trials and end their runs (OptunaSweep._wait_interrupted).
DRAIN_S = 60.0


class SweepError(RunnerError):
    """The study stopped (failure rate past ``max_failure_rate``, bad job return)."""


@dataclass
class _Trials:
    """What the trial loop shares: the study, how a trial is made, and the progress line."""

    study: Any
    storage: Any
    #: The storage spec (:func:`storage.resolve_storage`), for the trials' workers.
    spec: Any
    space: SearchSpace
    directions: list[str]
    pruner: Any
    progress: Progress
    #: The lock every sweep process of the study shares: count-and-ask holds it.
    lock: Callable[[], AbstractContextManager[Any]]


@dataclass
class _Opened:
    """The study as :meth:`OptunaSweep._open` leaves it, ready for trials."""

    study: Any
    storage: Any
    spec: Any
    space: SearchSpace
    directions: list[str]
    pruner: Any
    name: str
    info: Any

    def trials(self, progress: Progress) -> _Trials:
        """What the trial loop shares, with ``progress``."""
        return _Trials(
            self.study,
            self.storage,
            self.spec,
            self.space,
            self.directions,
            self.pruner,
            progress,
            self.info.lock,
        )


@dataclass
class _Ending:
    """What the body of :meth:`OptunaSweep._ending` tells it about how the sweep went."""

    #: The trial loop ran to its end (or the study stopped itself): the results file
    #: and the summary are written even when no trial completed.
    ended: bool = False


def _name_metrics(study: Any, objectives: list[str]) -> None:
    """Name the study's objectives (``val_accuracy``, not optuna-dashboard's "Objective 0")."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        # set_metric_names is flagged experimental (Optuna 3.2); it is a study system attr.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != objectives:
            study.set_metric_names(list(objectives))


class OptunaSweep:
    """One sweep process's part of a study."""

    def __init__(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.sc = config.hydra.sweeper
        self.launch_dir = Path(
            str(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or os.getcwd())
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.n_trials = int(self.sc.n_trials)
        self.n_jobs = max(1, int(self.sc.n_jobs))
        self.max_failure_rate = float(self.sc.max_failure_rate)
        self.mine: dict[int, Any] = {}  # trial number -> Trial, running in this process
        self.finished_here: list[Outcome] = []
        self._composer = JobComposer(hydra_context.config_loader, config)
        self.extend: Callable[..., Any] | None = None  # hydra.sweeper.custom_search_space
        #: The worker's index in a sweep run through a launcher (None: not a worker).
        self.worker: int | None = None
        self._started: float | None = None  # time.monotonic() when run() began
        self.heartbeat: Any = None
        self._lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    # -- the sweep ------------------------------------------------------------------------
    def run(self, arguments: list[str]) -> None:
        """Run trials until the study holds ``n_trials``; write optimization_results.yaml.

        Returns None, as the official plugin's ``sweep`` does: Hydra's ``multirun`` hands
        the value to no one (``hydra.main`` drops it); the results are in the file.

        Raises:
            SweepError: The study stopped (failure rate, a bad job return), or every trial
                of the study failed.
        """
        self._started = time.monotonic()
        setup_globals()
        from runner.sweeps.optuna._launched import launcher_target

        target = launcher_target(self.config)
        if target is not None:
            self._run_launched(arguments, target)
            return
        # Worker processes start, and import what a job needs, while this process opens the
        # study: their start-up is no longer added to the sweep's.
        self._pool = self._start_pool() if self.n_jobs > 1 else None
        try:
            self._run(arguments)
        except BaseException:
            self._stop_workers()
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def _start_pool(self) -> cf.ProcessPoolExecutor:
        """The ``n_jobs`` workers' pool, forked from a forkserver that is importing what a
        trial needs while this process opens the study (:func:`_worker.start_forkserver`);
        one the :class:`~runner.sweeps.optuna.warm.StartWorkers` callback started earlier,
        as the sweep began, when the app lists it.

        No worker is started here: each is forked at a trial's submit (the pool starts them
        as needed), by then in milliseconds; a warm-up task submitted now would wait here
        for the server's imports instead of overlapping them with the study's opening.
        """
        from runner.sweeps.optuna import _worker, warm

        ctx = _worker.start_forkserver(warm.server_preloads(self.config))
        return cf.ProcessPoolExecutor(
            max_workers=self.n_jobs,
            mp_context=ctx,
            initializer=_worker.init_worker,
            # The job's model and dataset modules: the user's code, imported per worker.
            initargs=(setup.target_modules(self.config), self.n_jobs),
        )

    def _stop_workers(self) -> None:
        """Interrupted or failed: SIGTERM the workers (a job ends its run KILLED), once, and
        wait for them."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)

    def _open(self, arguments: list[str], *, launcher: str | None = None, salt: int = 0) -> _Opened:
        """Everything up to the first trial: space, storage, study, lock, warm start.

        Args:
            arguments: The sweep's command-line arguments.
            launcher: The launcher's target when the sweep runs through one: a storage
                its workers cannot reach is refused here, before anything is created.
            salt: Added to the sampler's seed: each worker of a launched sweep samples
                its own sequence (one seed for all would propose the same points).
        """
        import optuna

        raw: Any = self.sc.direction
        directions = setup.parse_directions(
            OmegaConf.to_container(raw) if OmegaConf.is_list(raw) else raw
        )
        params = OmegaConf.to_container(self.sc.params, resolve=False) if self.sc.params else {}
        legacy = OmegaConf.select(self.sc, "search_space", default=None)
        if legacy:
            converted = legacy_params(OmegaConf.to_container(legacy, resolve=True))  # type: ignore[arg-type]
            if self.worker is None:  # once per sweep, not once per worker
                log.warning(
                    "hydra.sweeper.search_space is Hydra 1.1's (deprecated); read as "
                    "hydra.sweeper.params: %s. Move it there to silence this.",
                    ", ".join(f"{k}: {v!r}" for k, v in converted.items()),
                )
            params = {**converted, **(params or {})}  # type: ignore[dict-item]
        space = parse_space(params, list(arguments))  # type: ignore[arg-type]
        objectives = setup.objectives(self.config, directions)
        setup.validate(self._composer, space)
        configured = OmegaConf.select(self.sc, "storage")
        spec = st.resolve_storage(configured, self.launch_dir, self.sweep_dir, self.n_jobs)
        if launcher is not None:
            st.check_reachable(configured, spec, launcher)
        self.heartbeat = OmegaConf.select(self.sc, "heartbeat_interval", default=None)
        storage = st.make_storage(
            spec,
            heartbeat_interval=self.heartbeat if isinstance(spec, str) else None,
            grace_period=OmegaConf.select(self.sc, "grace_period", default=None),
        )
        name = setup.study_name(self.config, space, directions)
        # Our own log lines say what Optuna's INFO lines would ("A new study created",
        # one per trial), in the runner's format.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = setup.pruner(self.config)
        existing = self._existing_trials(storage, name)
        sampler = setup.sampler(self.config, space, existing, salt=salt)
        if isinstance(sampler, optuna.samplers.GridSampler):
            # As the official plugin does: past its last point the grid sampler would
            # propose a point again (and stop the study, which raises outside optimize).
            size = math.prod(len(v) for v in space.grid().values())
            if size < self.n_trials:
                if not salt:
                    log.info("study %s: n_trials capped at the grid's %d points", name, size)
                self.n_trials = size
        self.extend = setup.custom_search_space(self.config, self.task_function)
        study = st.open_study(
            storage, name=name, directions=directions, sampler=sampler, pruner=pruner
        )
        _name_metrics(study, objectives)
        info = self._info(space, name, directions, objectives, spec, pruner)
        self._lock = info.lock
        self._reap(study, startup=True)
        # Two sweep processes starting at once would both see an empty study and both
        # enqueue the warm-start points.
        with info.lock():
            setup.warm_start(self.config, study, space)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        return _Opened(study, storage, spec, space, directions, pruner, name, info)

    def _reap(self, study: Any, *, startup: bool = False) -> None:
        """Fail and re-queue the trials of dead sweep processes; end their MLflow runs.

        A trial whose heartbeat stopped (any machine), or whose owner on this host is gone,
        is voided and queued again (storage.fail_stale, storage.recover_stale); its job's
        run, left RUNNING by the dead process, is ended KILLED here, so no ``close-stale``
        is needed for it.
        """
        stale = st.fail_stale(study)  # atomic per trial in the storage: one process wins
        dead: list[int] = []
        if st.any_dead_local(study):
            # Under the study's lock: two survivors voiding the same trial would both queue
            # its retry (and the second fail on a trial already finished).
            with self._lock():
                dead = st.recover_stale(study, study._storage)
        if dead and startup:
            log.info(
                "study %s: re-queued trials %s left running by a killed sweep",
                study.study_name,
                dead,
            )
        if stale or dead:
            from runner.tracking.trials import close_dead_trials

            why = (
                f"ended KILLED by the Optuna sweep process {st.owner()}: the process that ran "
                "this trial died (its heartbeat stopped, or its process is gone); the trial "
                "was failed and its params queued again"
            )
            close_dead_trials(self.config, study, [*stale, *dead], why)

    @contextlib.contextmanager
    def _ending(self, o: _Opened, *, abort: Callable[[BaseException], None]) -> Iterator[_Ending]:
        """Open the study's parent run and end it, however the sweep in the body ends.

        The body sets ``ended`` once its trial loop has run to its end; a SweepError (the
        study stopped itself) counts as ended too. Then the results file and the summary
        are written, and the parent run ends FINISHED, or FAILED with the error. An
        interrupt ends it KILLED; any other error FAILED. On those two ``abort(error)``
        runs first, to leave the study clean for a resume; the error is then re-raised.

        Args:
            o: The opened study.
            abort: What this process must undo on an interrupt or an unexpected error
                (its running trials, or the workers' stop flag).

        Yields:
            The state the body fills in.
        """
        from runner.tracking.study import study_tracker  # no MLflow import without tracking

        study, info = o.study, o.info
        tracker = study_tracker(self.config)
        end = _Ending()
        status, error = "KILLED", None
        try:
            if tracker is not None:  # inside the try: a kill right after it ends the parent
                tracker.open(study, info)
            yield end
            status = "FINISHED"
        except KeyboardInterrupt as e:
            abort(e)
            raise
        except SweepError as e:
            end.ended = True
            status, error = "FAILED", str(e)
            raise
        except BaseException as e:
            abort(e)
            status, error = "FAILED", f"{type(e).__name__}: {e}"
            raise
        finally:
            # Interrupted or broken: a results file is written only once a trial completed.
            self._write_results(study, o.directions, ended=end.ended)
            if end.ended:
                self._summary(study, tracker)
            if tracker is not None:
                tracker.close(study, info, status=status, error=error)

    def _run(self, arguments: list[str]) -> None:
        o = self._open(arguments)
        study, storage, info = o.study, o.storage, o.info
        with self._ending(o, abort=lambda _: self._void_mine(study, storage)) as end:
            log.info(
                "study %s (%s, storage %s): %d of %d trials to go, n_jobs=%d",
                o.name,
                info.sampler,
                info.storage,
                max(self.n_trials - len(st.counted(study.get_trials(deepcopy=False))), 0),
                self.n_trials,
                self.n_jobs,
            )
            with (
                # An app without the runner's entry point would die on SIGTERM with its
                # runs RUNNING; there, SIGTERM becomes cooperative for the sweep.
                interrupts.installed(),
                self._beat(storage),
                Progress(o.name, self.n_trials, str(self.sc.progress)) as progress,
            ):
                self._loop(o.trials(progress))
            end.ended = True
            self._check_all_failed(study)

    def _beat(self, storage: Any) -> AbstractContextManager[Any]:
        """The heartbeat of this process's RUNNING trials (a no-op when it is off)."""
        if not st.heartbeat_on(storage):
            return contextlib.nullcontext()
        return st.Heartbeat(
            storage,
            lambda: [t._trial_id for t in list(self.mine.values())],
            storage.get_heartbeat_interval(),
        )

    # -- through a launcher ---------------------------------------------------------------
    def _run_launched(self, arguments: list[str], launcher_target: str) -> None:
        """Launch ``n_workers`` worker jobs through the launcher and wait for them.

        This process opens the study and its parent run, shows the progress read from the
        storage, writes optimization_results.yaml and ends the parent; the workers ask for
        and run the trials (:meth:`work`).
        """
        from hydra.core.plugins import Plugins

        from runner.sweeps.optuna import _launched, _worker

        n_workers = int(OmegaConf.select(self.sc, "n_workers", default=1) or 1)
        if n_workers < 1:
            raise SweepError(
                f"hydra.sweeper.n_workers={n_workers}: give the number of worker jobs the "
                "launcher runs (1 or more)."
            )
        o = self._open(arguments, launcher=launcher_target)
        study, info = o.study, o.info
        task = (
            _worker.task_ref(self.task_function),
            self.task_function,
            getattr(getattr(self.task_function, "__code__", None), "co_filename", None),
        )
        worker_task = WorkerTask(
            hydra_context=self.hydra_context, config=self.config, arguments=arguments, task=task
        )
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context,
            task_function=worker_task,  # type: ignore[arg-type]  # a callable object
            config=self.config,
        )
        outcome: dict[str, Any] = {}
        overrides: list[list[str]] = []  # the worker jobs', once the study is open

        def launch() -> None:
            try:
                outcome["returns"] = launcher.launch(overrides, initial_job_idx=0)
            except BaseException as e:  # a worker died (submitit, joblib raise)
                outcome["error"] = e

        thread = threading.Thread(target=launch, name="runner-launch", daemon=True)

        def abort(e: BaseException) -> None:
            # Workers ask for no more trials; those this terminal's signal reached end
            # their trial KILLED themselves.
            if isinstance(e, KeyboardInterrupt):
                self._set_stop(study, "the launching process was interrupted")
                cancel = getattr(launcher, "cancel", None)  # the Ray launcher's
                if callable(cancel):
                    cancel()
                if callable(cancel) or launcher_target in st.LOCAL_LAUNCHERS:
                    self._wait_interrupted(thread, study)
            else:
                self._set_stop(study, f"{type(e).__name__}: {e}")

        with self._ending(o, abort=abort) as end:
            self._set_stop(study, None)  # a stop left by an earlier launched run of it
            log.info(
                "study %s (%s, storage %s): %d of %d trials to go, %d worker(s) through %s",
                o.name,
                info.sampler,
                info.storage,
                max(self.n_trials - len(st.counted(study.get_trials(deepcopy=False))), 0),
                self.n_trials,
                n_workers,
                launcher_target.rsplit(".", 1)[-1],
            )
            overrides[:] = [
                _launched.worker_overrides(list(o.space.fixed), i) for i in range(n_workers)
            ]
            with (
                interrupts.installed(),
                Progress(o.name, self.n_trials, str(self.sc.progress)) as progress,
            ):
                thread.start()
                seen: set[int] = set()
                while thread.is_alive():
                    thread.join(timeout=1.0)
                    interrupts.checkpoint()
                    self._watch(study, progress, seen)
                self._wait_workers(study, progress, seen)
                self._watch(study, progress, seen)
            end.ended = True
            failures = self._worker_failures(outcome)
            self._check_all_failed(study)
            short = len(self._finished(study)) < self.n_trials
            if failures and (short or any(not killed for killed, _ in failures)):
                raise SweepError(
                    f"study {study.study_name!r}: {len(failures)} of {n_workers} worker job(s) "
                    f"failed: {failures[0][1]}. See the workers' logs (hydra.launcher's "
                    "output, the sweep dir's .runner/workers/); re-running resumes the study."
                )
            for _, why in failures:
                log.warning("a worker died (%s); its trials were re-run by the others", why)
            if short:
                raise SweepError(
                    f"study {study.study_name!r}: the workers ended with "
                    f"{len(self._finished(study))} of {self.n_trials} trials finished; "
                    "re-running resumes the study."
                )

    def _wait_interrupted(self, thread: threading.Thread, study: Any) -> None:
        """Interrupted: wait for the worker jobs to stop, then void what a dead one left
        RUNNING.

        The terminal's Ctrl-C reached the workers too where they share its process group
        (joblib's and submitit's local jobs): each voids its trial and ends its run KILLED.
        Leaving before they were done let them be cut off half-way (joblib kills the other
        workers as soon as one job raises; the process's exit ends the rest), with a
        trial left RUNNING and its params never queued again. Ray's jobs are cancelled by
        the launch thread (``RayLauncher.cancel``), force-cancelled (killed) after its
        ``cancel_wait_s``. A worker killed on this host, or one whose heartbeat stopped, is
        then :meth:`_reap`'s: its trial voided and queued again, its run ended KILLED, so
        a trial of a killed worker no longer waits RUNNING for the study's next run. A
        second Ctrl-C stops the wait.
        """
        deadline = time.monotonic() + DRAIN_S
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(timeout=0.5)
            interrupts.checkpoint()
        if thread.is_alive():
            log.warning(
                "study %s: worker jobs still running %g s after the interrupt; "
                "the next run of the sweep re-runs their trials",
                study.study_name,
                DRAIN_S,
            )
        self._reap(study)

    def _set_stop(self, study: Any, why: str | None) -> None:
        """Tell the workers to ask for no more trials (None: clear it)."""
        with contextlib.suppress(Exception):  # the storage itself may be what broke
            study._storage.set_study_system_attr(study._study_id, contract.STOP_ATTR, why)

    def _stopped(self, study: Any) -> str | None:
        attrs = study._storage.get_study_system_attrs(study._study_id)
        value = attrs.get(contract.STOP_ATTR)
        return str(value) if value else None

    def _finished(self, study: Any, trials: list[Any] | None = None) -> list[Any]:
        from optuna.trial import TrialState

        if trials is None:
            trials = study.get_trials(deepcopy=False)
        return [
            t
            for t in st.counted(trials)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        ]

    def _watch(self, study: Any, progress: Progress, seen: set[int]) -> None:
        """Show the study's progress as the storage has it; log each newly finished trial."""
        self._reap(study)  # a dead worker's trial: re-queued, its run ended KILLED
        if progress.mode == "none":
            return  # nothing is shown: the storage is not read for it
        # Read once for the whole look, not once per event: each read is every trial of the
        # study (on SQLite here 4 ms at 30 trials, 53 ms at 1000), on the workers' cores.
        trials = study.get_trials(deepcopy=False)
        for t in sorted(self._finished(study, trials), key=lambda t: t.number):
            if t.number in seen:
                continue
            seen.add(t.number)
            progress.done_here += 1
            error = t.system_attrs.get(contract.TRIAL_ERROR_ATTR) or ""
            shown = ", ".join(f"{v:.6g}" for v in (t.values or [])) or str(error)[:200]
            self._show(
                study,
                progress,
                event=f"trial {t.number} {t.state.name} {shown} {dict(t.params)}",
                trials=trials,
            )
        self._show(study, progress, trials=trials)

    def _wait_workers(self, study: Any, progress: Progress, seen: set[int]) -> None:
        """Wait for workers still alive after the launcher returned (or raised at one).

        submitit's ``launch`` raises at the first job that died, while the others may still
        run (and re-run the dead one's trial): this waits for their liveness beats to say
        done, or to stop.
        """
        from runner.sweeps.optuna import _launched

        interval = self._alive_interval()
        while _launched.live_workers(study, stale_after=3 * interval + 5):
            time.sleep(min(interval, 1.0))
            interrupts.checkpoint()
            self._watch(study, progress, seen)

    def _alive_interval(self) -> float:
        return float(self.heartbeat) if self.heartbeat else 5.0

    @staticmethod
    def _worker_failures(outcome: dict[str, Any]) -> list[tuple[bool, str]]:
        """(died, why) per failed worker: ``died`` when its process was lost, not raised."""
        from hydra.core.utils import JobStatus

        failures: list[tuple[bool, str]] = []
        if "error" in outcome:
            e = outcome["error"]
            failures.append((True, f"{type(e).__name__}: {str(e).strip()[:500]}"))
        for ret in outcome.get("returns") or []:
            if ret.status != JobStatus.COMPLETED:
                value = ret._return_value
                why = (
                    f"{type(value).__name__}: {value}"
                    if isinstance(value, BaseException)
                    else str(value)
                )
                failures.append((False, why[:1000]))
        return failures

    # -- a worker of a launched sweep -----------------------------------------------------
    def work(self, arguments: list[str], index: int) -> int:
        """One worker job's loop: ask, run inline, tell, until the study holds ``n_trials``.

        Runs in the job a launcher started (:class:`WorkerTask`). The study, its parent
        run and the warm start were made by the launching process; this only runs trials.
        A study stopped by a worker's failure rate, or by an interrupted launching process,
        is asked for no more trials.

        Returns:
            How many trials this worker finished.

        Raises:
            SweepError: This worker's trials failed past ``max_failure_rate`` (the study is
                then stopped for every worker).
        """
        from runner import threads
        from runner.sweeps.optuna import _launched, warm

        setup_globals()
        self.n_jobs = 1  # each worker runs its trials inline
        n_workers = int(OmegaConf.select(self.sc, "n_workers", default=1) or 1)
        threads.limit(_launched.workers_here(self.config, n_workers))
        self.worker = index
        o = self._open(arguments, salt=index + 1)
        study, storage = o.study, o.storage
        # The launching process shows the study's progress; a worker's console is the
        # launching terminal itself under joblib (every line twice) or a log file.
        progress_mode = "none"
        try:
            with (
                interrupts.installed(),
                self._beat(storage),
                _launched.WorkerAlive(study, self._alive_interval()),
                Progress(o.name, self.n_trials, progress_mode) as progress,
            ):
                # Before the first ask: a trial's Optuna start is when it is asked, and a
                # worker's own start (MLflow, the model's library, first-use set-up: 3-5 s
                # here, two workers at once on two cores) counted as its first trial's.
                warm.import_ahead(self.config)
                self._loop_inline(o.trials(progress))
        except KeyboardInterrupt:
            self._void_mine(study, storage)
            raise
        except SweepError as e:
            self._set_stop(study, str(e))
            raise
        except BaseException:
            self._void_mine(study, storage)
            raise
        return len(self.finished_here)

    def _existing_trials(self, storage: Any, name: str) -> int:
        import optuna

        try:
            return len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            return 0

    def _info(
        self,
        space: SearchSpace,
        name: str,
        directions: list[str],
        objectives: list[str],
        spec: Any,
        pruner: Any,
    ) -> Any:
        from runner.tracking.redact import redact_text
        from runner.tracking.study import StudyInfo

        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default={}) or {}
        sampler = str(choices.get("hydra/sweeper/sampler") or self.sc.sampler._target_)
        pruner_name = str(choices.get("hydra/sweeper/pruner") or type(pruner).__name__)
        if isinstance(spec, str):
            shown = redact_text(spec)
            # Only a file lock beside a SQLite file or in the launch dir; PostgreSQL
            # storages lock in the database (study_lock), for sweeps on several machines.
            lock = (
                Path(spec[len("sqlite:///") :] + ".runner.lock")
                if spec.startswith("sqlite:///")
                else self.launch_dir / ".runner" / "optuna.lock"
            )
        else:
            shown = "in-memory" if spec is None else f"journal:{spec[1]}"
            lock = self.sweep_dir / ".runner" / "optuna.lock"
        return StudyInfo(
            study_name=name,
            sampler=sampler,
            pruner=pruner_name,
            space=space.describe(),
            directions=directions,
            objectives=objectives,
            storage=shown,
            n_trials=self.n_trials,
            sweep_dir=self.sweep_dir,
            lock_file=lock,
            lock=lambda: st.study_lock(spec, name, lock),
        )

    def _ask(self, ctx: _Trials) -> Any | None:
        """A new trial, or None when the study already holds ``n_trials``.

        Counting and asking are one step under the study's lock (PostgreSQL: an advisory
        lock, for every machine; SQLite and journal files: a file lock): two sweep
        processes asking for the last trial at once would otherwise both get one, and the
        study would hold a trial too many.
        """
        study, storage = ctx.study, ctx.storage
        self._reap(study)  # a killed process's trials, on any machine (heartbeat on)
        if self.worker is not None and self._stopped(study):
            return None  # a worker's failures, or an interrupted launching process
        with ctx.lock():
            if len(st.counted(study.get_trials(deepcopy=False))) >= self.n_trials:
                return None
            trial = study.ask(fixed_distributions=ctx.space.distributions)
            # Owned before the lock is released: a survivor's stale check never sees it
            # ownerless.
            storage.set_trial_system_attr(trial._trial_id, contract.OWNER_ATTR, st.owner())
            if st.heartbeat_on(storage):
                storage.record_heartbeat(trial._trial_id)  # stale-checked from its first beat
        return trial

    def _job_config(self, trial: Any, space: SearchSpace) -> DictConfig:
        """The trial's job config, as Hydra's ``load_sweep_config`` would compose it.

        A full compose costs 0.09-0.8 s here, most of a small trial's overhead: trials that
        share their config-group choices share a composed template (:mod:`runner.composer`).
        """
        params = [f"{k}={format_value(v)}" for k, v in trial.params.items()]
        cfg = self._composer.compose(list(space.fixed) + params)
        with open_dict(cfg):
            cfg.hydra.job.id = str(trial.number)
            cfg.hydra.job.num = trial.number
        return cfg

    def _compose(
        self, study: Any, trial: Any, space: SearchSpace, progress: Progress
    ) -> DictConfig | None:
        """The trial's config; a trial whose params do not compose fails without a job."""
        if self.extend is not None:
            try:
                self.extend(self.config, trial)  # may suggest more params (define-by-run)
            except Exception as e:
                error = (
                    f"hydra.sweeper.custom_search_space raised for trial {trial.number}: "
                    f"{type(e).__name__}: {e}"
                )
                self._tell(study, trial, Outcome("FAIL", error=error), progress)
                return None
            setup.refuse_overlap(study, trial, space)  # a fixed param suggested: void, stop
        try:
            return self._job_config(trial, space)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            error = f"the trial's config cannot be composed ({dict(trial.params)}): {msg}"
            self._tell(study, trial, Outcome("FAIL", error=error), progress)
            return None

    def _ref(self, trial: Any, ctx: _Trials) -> TrialRef:
        import optuna

        return TrialRef(
            storage=ctx.spec,
            study_name=trial.study.study_name,
            trial_id=trial._trial_id,
            number=trial.number,
            directions=ctx.directions,
            pruner=ctx.pruner,
            pruning=not isinstance(ctx.pruner, optuna.pruners.NopPruner),
        )

    def _loop(
        self,
        ctx: _Trials,
    ) -> None:
        if self.n_jobs == 1:
            self._loop_inline(ctx)
        else:
            self._loop_pool(ctx)

    def _loop_inline(
        self,
        ctx: _Trials,
    ) -> None:
        from hydra.core.utils import configure_log

        from runner.sweeps.optuna._worker import run_trial

        study, progress = ctx.study, ctx.progress

        while True:
            interrupts.checkpoint()  # between two trials: nothing of ours is half done
            trial = self._ask(ctx)
            if trial is None:
                if self._await_others(study):
                    continue
                break
            self.mine[trial.number] = trial
            self._show(study, progress)
            handle = TrialHandle(self._ref(trial, ctx), trial)
            config = self._compose(study, trial, ctx.space, progress)
            if config is None:
                continue
            result = run_trial(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=config,
                handle=handle,
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            self._tell(study, trial, result, progress)

    def _loop_pool(
        self,
        ctx: _Trials,
    ) -> None:
        import cloudpickle
        from hydra.core.singleton import Singleton

        from runner.sweeps.optuna import _worker

        study, progress = ctx.study, ctx.progress
        pool = self._pool
        assert pool is not None
        running: dict[cf.Future[Any], Any] = {}
        # Pickled once: none of it changes during a sweep (Hydra's joblib launcher, too, takes
        # the singletons' state once per batch).
        task = (
            _worker.task_ref(self.task_function),
            self.task_function,
            getattr(getattr(self.task_function, "__code__", None), "co_filename", None),
        )
        sweep = cloudpickle.dumps((self.hydra_context, task, Singleton.get_state()))
        try:
            stop = False
            while True:
                interrupts.checkpoint()
                while not stop and len(running) < self.n_jobs:
                    trial = self._ask(ctx)
                    if trial is None:
                        stop = True
                        break
                    self.mine[trial.number] = trial
                    config = self._compose(study, trial, ctx.space, progress)
                    if config is None:
                        continue
                    payload = cloudpickle.dumps((config, self._ref(trial, ctx)))
                    running[pool.submit(_worker.run_trial_payload, sweep, payload)] = trial
                    self._show(study, progress)
                if not running:
                    if stop and self._await_others(study):
                        stop = False
                        continue
                    break
                # Polled, not one long wait: a signal waits for a safe point (never
                # inside the futures' locks), and this is one every half second.
                done, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    trial = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as e:  # the worker died (killed, out of memory)
                        result = Outcome("FAIL", error=f"the trial's worker died: {e}")
                    if result.state == "KILLED":
                        raise KeyboardInterrupt("a trial's worker was interrupted")
                    try:
                        self._tell(study, trial, result, progress)
                    except SweepError:
                        stop = True
                        self._drain(study, running, progress)
                        raise
        except BaseException:
            self._stop_workers()  # before the study is closed, their runs end KILLED
            # A trial that completed while the others were stopped counts as it ended.
            for future, trial in list(running.items()):
                if future.done() and not future.cancelled() and future.exception() is None:
                    result = future.result()
                    if result.state != "KILLED":
                        self._record(study, trial, result, progress)
            raise

    def _await_others(self, study: Any) -> bool:
        """Wait for other processes' RUNNING trials; True when one died and was re-queued.

        Waiting lets the last process to finish write the study's final summary, and lets a
        survivor run the retry of a dead process's trial instead of leaving the study one
        trial short. With the heartbeat on it waits for trials of any machine (a dead one's
        trial is failed after the grace period); without it only for those of live
        processes on this host (a dead one's trial is re-queued at once): a silent process
        on another machine could be dead, and nothing would ever end the wait.
        """
        from optuna.trial import TrialState

        beat = st.heartbeat_on(study._storage)
        interval = float(study._storage.get_heartbeat_interval()) if beat else 0.5
        while True:
            self._reap(study)
            if self.worker is not None and self._stopped(study):
                return False
            trials = study.get_trials(deepcopy=False)
            if len(st.counted(trials)) < self.n_trials:
                return True
            others = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and t.number not in self.mine
                and (beat or st.local_owner_alive(t))
            ]
            if not others:
                return False
            time.sleep(interval)
            interrupts.checkpoint()

    def _drain(self, study: Any, running: dict[cf.Future[Any], Any], progress: Progress) -> None:
        """Let the trials already running finish (after a cut-off) and record them."""
        for future in cf.as_completed(list(running)):
            trial = running.pop(future)
            try:
                result = future.result()
            except Exception as e:
                result = Outcome("FAIL", error=str(e))
            if result.state != "KILLED":
                self._record(study, trial, result, progress)

    def _record(self, study: Any, trial: Any, result: Outcome, progress: Progress) -> None:
        from optuna.trial import TrialState

        # Forget it first: an interrupt from here on leaves it RUNNING with a dead owner,
        # which the next start re-queues (never a finished trial voided).
        self.mine.pop(trial.number, None)
        if result.state == "COMPLETE":
            st.tell(study, trial, values=result.values)
        elif result.state == "PRUNED":
            st.tell(study, trial, state=TrialState.PRUNED)
        else:
            if result.error:
                study._storage.set_trial_system_attr(
                    trial._trial_id, contract.TRIAL_ERROR_ATTR, result.error[:2000]
                )
            st.tell(study, trial, state=TrialState.FAIL)
        self.finished_here.append(result)
        progress.done_here += 1
        shown = ", ".join(f"{v:.6g}" for v in result.values) or (result.error or "")[:200]
        self._show(
            study,
            progress,
            event=f"trial {trial.number} {result.state} {shown} {dict(trial.params)}",
        )

    def _tell(self, study: Any, trial: Any, result: Outcome, progress: Progress) -> None:
        self._record(study, trial, result, progress)
        if result.fatal:
            raise SweepError(
                f"study {study.study_name!r} stopped: {result.error}. Make the job return one "
                "value per hydra.sweeper.direction."
            )
        failed = [r for r in self.finished_here if r.state == "FAIL"]
        rate = len(failed) / len(self.finished_here)
        if failed and rate > self.max_failure_rate:
            raise SweepError(
                f"study {study.study_name!r} stopped: {len(failed)} of "
                f"{len(self.finished_here)} finished trials failed ({rate:.0%}), more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}. Last error: "
                f"{failed[-1].error}. Fix the failing jobs (see their runner.error tag and "
                "logs), or raise hydra.sweeper.max_failure_rate; re-running resumes the study."
            )

    def _void_mine(self, study: Any, storage: Any) -> None:
        """Interrupted: this process's running trials do not count and are re-queued."""
        for trial in list(self.mine.values()):
            try:
                frozen = study._storage.get_trial(trial._trial_id)
                st.void_and_retry(study, storage, frozen)
            except Exception as e:
                log.error("could not mark trial %s failed: %s", trial.number, e)
        self.mine.clear()

    def _show(
        self,
        study: Any,
        progress: Progress,
        event: str | None = None,
        *,
        trials: list[Any] | None = None,
    ) -> None:
        """Refresh the progress line (and log ``event``) from the study's trials.

        ``trials``: the study's trials as just read, so that one look at the storage serves
        several events; read here when None. Nothing is read when nothing would be shown (a
        launched worker's progress is ``none``: it read every trial of the study after each
        of its own, a cost that grew with the study).
        """
        from optuna.trial import TrialState

        if progress.mode == "none" or (event is None and progress.mode != "rich"):
            return  # only the live line shows a trial's start; log lines show its end

        trials = st.counted(study.get_trials(deepcopy=False) if trials is None else trials)
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        best = "-"
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and len(study.directions) == 1:
            best = f"{study.best_value:.6g}"
        elif complete:
            best = f"{len(study.best_trials)} on the Pareto front"
        progress.update(
            done=n[TrialState.COMPLETE] + n[TrialState.PRUNED] + n[TrialState.FAIL],
            running=n[TrialState.RUNNING],
            failed=n[TrialState.FAIL],
            pruned=n[TrialState.PRUNED],
            best=best,
            event=event,
        )

    def _check_all_failed(self, study: Any) -> None:
        """A study whose every trial failed is an error, whatever ``max_failure_rate`` says.

        ``max_failure_rate=1.0`` lets a sweep go on past failures; a sweep of which no
        trial ran is still no result (the official plugin, too, raises when it has no best).
        """
        from optuna.trial import TrialState

        trials = st.counted(study.get_trials(deepcopy=False))
        if not trials or any(t.state != TrialState.FAIL for t in trials):
            return
        first = min(trials, key=lambda t: t.number)
        error = first.system_attrs.get(contract.TRIAL_ERROR_ATTR) or "(no error recorded)"
        raise SweepError(
            f"study {study.study_name!r}: all {len(trials)} trials failed; the first error "
            f"was (trial {first.number}): {error}. Fix the failing jobs (see their "
            "runner.error tag and logs); re-running resumes the study."
        )

    def _summary(self, study: Any, tracker: Any = None) -> None:
        """The sweep's last lines (runner.tracking.summary): counts, best, where to look.

        ``tracker`` is the study's :class:`~runner.tracking.study.StudyTracker` (None: not
        tracked). Quiet with ``hydra.sweeper.progress=none``.
        """
        from optuna.trial import TrialState

        from runner.tracking.summary import (
            Parent,
            SweepSummary,
            emit,
            fmt_number,
            format_sweep,
            is_quiet,
        )

        if str(self.sc.progress) == "none" or is_quiet(self.config):
            return
        trials = st.counted(study.get_trials(deepcopy=False))
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        counts = {
            "complete": n[TrialState.COMPLETE],
            "pruned": n[TrialState.PRUNED],
            "failed": n[TrialState.FAIL],
            "running": n[TrialState.RUNNING],
            "waiting": n[TrialState.WAITING],
        }
        # This run's wall time: a resumed study's first-to-last trial span would count
        # the pause between the two runs.
        wall = time.monotonic() - self._started if self._started is not None else None
        summary = SweepSummary(
            title=f"study {study.study_name}",
            counts=counts,
            unit="trial",
            wall_s=wall,
            results_file=self.sweep_dir / "optimization_results.yaml",
        )
        if not n[TrialState.COMPLETE]:
            summary.note = "no trial completed"
        elif len(study.directions) == 1:
            best = study.best_trial
            summary.best_value = float(best.value)
            summary.best_label = f"trial {best.number}"
            summary.best_params = [f"{k}={fmt_number(v)}" for k, v in best.params.items()]
            try:
                objective = OmegaConf.select(self.config, "objective", default=None)
            except Exception:  # another app's interpolation that needs a job's context
                objective = None
            summary.objective = str(objective) if isinstance(objective, str) else None
        else:
            summary.note = f"{len(study.best_trials)} trials on the Pareto front"
        if tracker is not None and tracker.parent_id:
            summary.parents = [Parent(tracker.uri, tracker.experiment_id, tracker.parent_id)]
        emit(format_sweep(summary))

    def _write_results(self, study: Any, directions: list[str], *, ended: bool) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any]
        if not complete:
            if not ended:
                return
            n = len(st.counted(study.get_trials(deepcopy=False)))
            results = {"name": "optuna", "message": f"no trial completed (of {n})"}
            if len(directions) == 1:
                results |= {"best_params": None, "best_value": None}
            else:
                results["solutions"] = []
        elif len(directions) == 1:
            best = study.best_trial
            results = {
                "name": "optuna",
                "best_params": dict(best.params),
                "best_value": best.value,
            }
        else:
            results = {
                "name": "optuna",
                "solutions": [
                    {"params": dict(t.params), "values": list(t.values)} for t in study.best_trials
                ],
            }
        from runner.tracking.redact import redact_tree

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # Trial params are config paths: a swept secret (db.password) is not written out.
        results = {k: redact_tree(v) if k != "name" else v for k, v in results.items()}
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")


class WorkerTask:
    """The task function of a worker job (picklable; the launcher runs it in the job).

    Args:
        hydra_context: The sweep's Hydra context (config loader, callbacks).
        config: The sweep's own config (not the worker job's): trials compose from it.
        arguments: The sweep's command-line arguments (the search space).
        task: The user's task function as :func:`runner.sweeps.optuna._worker.task_ref`,
            the function itself and its file name.
    """

    def __init__(
        self, *, hydra_context: Any, config: DictConfig, arguments: list[str], task: Any
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.arguments = list(arguments)
        self.task = task

    def __call__(self, cfg: DictConfig) -> int:
        """Run the worker's sweep loop; return how many trials it finished."""
        from hydra.core.hydra_config import HydraConfig

        from runner.sweeps.optuna._worker import resolve_task

        hydra_cfg: Any = HydraConfig.get()  # the worker job's (marked by worker_overrides)
        index = int(OmegaConf.select(hydra_cfg, "sweeper.worker", default=0) or 0)
        sweep = OptunaSweep(
            hydra_context=self.hydra_context,
            task_function=resolve_task(*self.task),
            config=self.config,
        )
        # Trials compose and run from the launch directory, as in the launching process:
        # with hydra.job.chdir=True (Hydra's default for version_base < 1.2) this job runs
        # in its own output dir, and a relative sweep dir resolved from there put every
        # trial's job dir, and the sweep's parents file, under the worker's folder: each
        # worker made a parent run of its own.
        job_dir = os.getcwd()
        os.chdir(hydra_cfg.runtime.cwd)
        try:
            return sweep.work(self.arguments, index)
        finally:
            os.chdir(job_dir)
