"""Every tag, param and attribute name the runner writes or reads: the names users' scripts,
the MLflow UI's searches and other teams' tools rely on. One home each; code imports them.

Tags are MLflow run tags, except where a name says ``ATTR`` (Optuna trial and study attrs).
"""

from __future__ import annotations

# -- MLflow's own tags that the runner writes ---------------------------------------------
#: Nesting: MLflow's own parent tag (the UI nests children under it).
PARENT_RUN_ID = "mlflow.parentRunId"
SOURCE_NAME = "mlflow.source.name"
SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
#: The run's description in the UI.
NOTE = "mlflow.note.content"

# -- what a run is ----------------------------------------------------------------------------
#: ``job`` or ``sweep`` (a sweep's parent run).
KIND = "runner.kind"
#: The command line's overrides, a JSON list (secrets redacted).
OVERRIDES = "runner.overrides"
SEED = "runner.seed"
OUTPUT_DIR = "runner.output_dir"
JOB_NUM = "runner.job_num"
SWEEP_DIR = "runner.sweep_dir"
#: ``optuna`` on an Optuna study's parent run.
SWEEPER = "runner.sweeper"
BACKEND = "runner.backend"
TRACKING_URI = "runner.tracking_uri"
#: A failed run's error (type and message).
ERROR = "runner.error"

# -- provenance -------------------------------------------------------------------------------
PYTHON = "runner.python"
GIT_COMMIT = "runner.git.commit"
GIT_DIRTY = "runner.git.dirty"
#: ``runner.pkg.<distribution>``: the versions of the packages a job used.
PKG_PREFIX = "runner.pkg."
DATASET_DIGEST = "runner.dataset_digest"
TASK = "runner.task"

# -- Optuna trials and studies, as MLflow sees them -----------------------------------------
TRIAL_NUMBER = "runner.trial_number"
TRIAL_STATE = "runner.trial_state"
STUDY = "runner.study"
N_TRIALS = "runner.n_trials"
BEST = "runner.best"
BEST_PARAMS = "runner.best_params"
BEST_TRIAL_NUMBER = "runner.best_trial_number"
BEST_RUN_ID = "runner.best_run_id"
PARETO_TRIALS = "runner.pareto_trials"

# -- replay, sync, lifecycle ----------------------------------------------------------------
REPLAY_OF = "runner.replay_of"
REPLAY_OVERRIDES = "runner.replay.overrides"
BUFFERED_FOR = "runner.buffered_for"
SYNCED_FROM = "runner.synced_from"
SYNCED_TO = "runner.synced_to"
CLOSED_REASON = "runner.closed_reason"

# -- Optuna attrs ----------------------------------------------------------------------------
#: Trial system attrs: which process runs it (``host:pid``), whether it counts, its error.
OWNER_ATTR = "runner.owner"
VOID_ATTR = "runner.void"
TRIAL_ERROR_ATTR = "runner.error"
#: Trial user attrs: the number of the trial a re-queued one re-runs; a warm-start point.
RETRY_ATTR = "runner.retry_of"
WARM_START_ATTR = "runner.warm_start"
#: Study user attrs: the study's parent run, and the store it lives in.
STUDY_PARENT_ATTR = "runner.mlflow.parent_run_id"
STUDY_URI_ATTR = "runner.mlflow.tracking_uri"
#: Study system attrs of a sweep run through a launcher: why the study stopped (workers ask
#: no more trials), and each worker's liveness (``runner.worker:<host:pid>`` -> beat time,
#: or ``done``).
STOP_ATTR = "runner.stop"
WORKER_ATTR_PREFIX = "runner.worker:"
