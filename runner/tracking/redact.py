"""Keep secrets out of MLflow and off the disk: the one redaction every write goes through.

Two shapes of input, one rule set:

* **Structured** things (a config tree, a command-line override, Hydra's YAML files) are
  redacted by key: a value is secret when a word of its config path names a secret
  (:func:`is_secret_key`); overrides are parsed with Hydra's own parser, so a dict, list or
  grid value (``+db={user: u, password: p}``, ``+db.password=s1,s2``) is redacted element by
  element.
* **Free text** (tags, run names, descriptions, error messages, log lines, artifacts) is
  redacted by shape (:func:`redact_text`): URL credentials (``scheme://user:password@host``,
  also ``scheme://TOKEN@host`` and passwords holding ``/`` or ``@``), ``key=value`` and
  ``key: value`` pairs with a secret key (query strings and Python or JSON reprs included),
  ``Bearer`` headers, PEM private keys and well-known token formats (GitHub, OpenAI, Slack,
  AWS access key ids, Hugging Face, JWTs).

Secret values become :data:`REDACTED`. A ``${...}`` reference is not a secret and is kept,
which is what lets a replay resolve the secret from the replaying user's environment; only
its literal parts that could be one are redacted (the default of ``${oc.env:VAR,default}``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from runner.tracking._redact_core import (
    MIN_MASKED,
    REDACTED,
    add_secret_keys,
    is_secret_key,
    masked_values,
    redact_exception,
    redact_mapping,
    redact_scalar,
    redact_text,
    redact_tree,
)
from runner.tracking._redact_hydra import (
    redact_dirname,
    redact_file,
    redact_job_dirname,
    redact_override,
    redact_yaml_text,
)

__all__ = [
    "REDACTED",
    "add_secret_keys",
    "install_log_redaction",
    "is_secret_key",
    "masking",
    "redact_dirname",
    "redact_exception",
    "redact_file",
    "redact_job_dirname",
    "redact_mapping",
    "redact_override",
    "redact_scalar",
    "redact_text",
    "redact_tree",
    "redact_yaml_text",
]


@contextlib.contextmanager
def masking(values: Iterable[str]) -> Iterator[None]:
    """Mask ``values`` in every write and log line while the block runs.

    Replay passes what the logged config read from the replaying user's environment: a
    stranger's config could route ``${oc.env:AWS_SECRET_ACCESS_KEY}`` into an estimator
    argument whose error message (the run's ``runner.error`` tag) quotes it. Values shorter
    than :data:`MIN_MASKED` characters are left alone.
    """
    added = {v for v in values if len(v) >= MIN_MASKED} - masked_values()
    masked_values().update(added)
    try:
        yield
    finally:
        masked_values().difference_update(added)


# -- log lines -----------------------------------------------------------------------------
def install_log_redaction() -> None:
    """Redact every log record of this process (message and traceback) as it is made.

    Hydra sends a job's log lines to ``<output dir>/<job name>.log`` as well as the console;
    a secret in a message (a failing URL, a job's overrides) would land on disk there.
    """
    make = logging.getLogRecordFactory()
    if getattr(make, "redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it
            return record
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned = redact_text(text)
            if cleaned != text:
                record.exc_text = cleaned
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
