"""The rules of the redaction: secret keys, references, free text, plain trees.

:mod:`runner.tracking.redact` is the public surface (and says what is matched).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "MIN_MASKED",
    "REDACTED",
    "add_secret_keys",
    "is_reference",
    "is_secret_key",
    "masked_values",
    "might_hold_secret",
    "redact_exception",
    "redact_mapping",
    "redact_scalar",
    "redact_text",
    "redact_tree",
]

REDACTED = "***"

#: Values masked wherever they appear, whatever their key or shape (see :func:`masked_values`).
_MASKED: set[str] = set()
#: Shorter values are not masked: replacing every "1" or "true" would garble everything.
MIN_MASKED = 8


def masked_values() -> set[str]:
    """The process's set of values to mask in every write (a replay adds to it what its
    logged config read from the environment, so that no error message can echo it).
    """
    return _MASKED


def _mask(text: str) -> str:
    for value in sorted(_MASKED, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


# -- keys ----------------------------------------------------------------------------------
# A key is split into words at every non-alphanumeric character and at camelCase humps
# (`db.apiKey` -> db, api, key); each word is checked on its own, with the word before it.


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: A word holding one of these is secret wherever it stands (`dbpassword`, `client_secret`).
_STEMS = (
    "passw",
    "passphrase",
    "passcode",
    "secret",
    "credential",
    "bearer",
    "jwt",
    "cookie",
    "webhook",
)
#: Whole words that are secret.
_WORDS = frozenset({"pwd", "cred", "creds", "otp", "totp", "hotp", "mfa", "sig", "signature"})
#: `pass` is the password (`db.pass`, Hydra's tutorial), except after these (`n_pass`,
#: `high_pass`) and in these words.
_PASS_OK = _set(
    "n num max min first second last final forward backward single multi one two high low "
    "band all by"
)
_PASS_WORDS = _set("bypass compass encompass surpass trespass overpass underpass")
#: `token(s)` is a credential, except after these (`pad_token`, `max_new_tokens`).
_TOKEN_OK = _set(
    "pad eos bos unk sep cls mask special start end max min num n total new extra added per "
    "count vocab image img text audio video prompt query context input output gen generated "
    "sot eot eod stop decoder encoder bpe word sub subword hidden position pos type segment "
    "prefix suffix placeholder first last next prev null blank space split chat system "
    "assistant tool think answer"
)
#: `key(s)` and `*key` names are secret (`encryption_key`, `signing_key`, `apiKey`, a bare
#: `key`), except after these, which name a lookup key (`sort_key`, `exclude_keys`).
_KEY_OK = _set(
    "sort primary foreign partition cache group join index dict label labels input inputs "
    "output outputs target targets metric metrics monitor hash row column col feature "
    "features image img text id lookup map order unique shard routing sample data dataset "
    "batch field attr name value class time event entity query prompt answer response "
    "context state model split result score pred prediction exclude include ignore dedup "
    "merge item node object obj hot short mask audio video caption source src "
    "tgt dst seq sequence frame dim embedding rng prng random seed"
)
_KEY_WORDS = _set(
    "monkey donkey hockey turkey jockey whiskey lackey hotkey turnkey flunkey malarkey"
)
_AUTHOR = re.compile(r"author(?:s|ed|ing|ship|ity|ities|itative)?$")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _words(key: str) -> list[str]:
    return [w.lower() for part in _NON_ALNUM.split(key) for w in _CAMEL.split(part) if w]


def _ends(word: str, suffixes: tuple[str, ...], ok: frozenset[str], prev: str) -> bool:
    """``word`` is one of ``suffixes`` after a word not in ``ok``, or a compound ending in one
    whose prefix is not in ``ok``."""
    if word in suffixes:
        return prev not in ok
    return any(word.endswith(s) and word[: -len(s)] not in ok for s in suffixes)


def _secret_word(words: list[str], i: int) -> bool:
    w = words[i]
    if w in _WORDS or any(s in w for s in _STEMS):
        return True
    if "auth" in w and not _AUTHOR.search(w):
        return True
    prev = next((p for p in reversed(words[:i]) if not p.isdigit()), "")
    if w.endswith("pass") and w not in _PASS_WORDS and _ends(w, ("pass",), _PASS_OK, prev):
        return True
    if w.endswith(("token", "tokens")) and _ends(w, ("token", "tokens"), _TOKEN_OK, prev):
        return True
    return (
        w.endswith(("key", "keys"))
        and w.removesuffix("s") not in _KEY_WORDS
        and _ends(w, ("key", "keys"), _KEY_OK, prev)
    )


#: Extra secret-key patterns (the MLflow callback's ``secret_keys``), matched on the path.
_EXTRA_KEYS: list[re.Pattern[str]] = []


def add_secret_keys(patterns: Iterable[str]) -> None:
    """Treat config keys matching any of ``patterns`` (regular expressions, searched in the
    dotted path, case-insensitive) as secrets too, for the rest of this process."""
    known = {p.pattern for p in _EXTRA_KEYS}
    new = [re.compile(p, re.I) for p in patterns if p not in known]
    if new:
        _EXTRA_KEYS.extend(new)
        _is_secret_word_key.cache_clear()


def is_secret_key(key: str) -> bool:
    """Whether a config key (or any word of a dotted path) names a secret (see
    :func:`_is_secret_word_key` for the words), or matches an :func:`add_secret_keys` pattern.
    """
    text = str(key)
    return _is_secret_word_key(text) or any(p.search(text) for p in _EXTRA_KEYS)


@functools.lru_cache(maxsize=8192)
def _is_secret_word_key(key: str) -> bool:
    """Whether a config key (or any word of a dotted path) names a secret.

    Secret words: anything holding ``passw``, ``passphrase``, ``passcode``, ``secret``,
    ``credential``, ``bearer``, ``jwt``, ``cookie`` or ``webhook``; the words ``pwd``,
    ``cred(s)``, ``otp``, ``totp``, ``hotp``, ``mfa``, ``sig``, ``signature``; ``auth`` in a
    word (``oauth``, ``authorization``; not ``author``); ``pass`` (``db.pass``, ``dbpass``;
    not ``n_pass``, ``bypass``); ``token(s)`` (``hf_token``, ``accessToken``; not
    ``pad_token``, ``max_tokens``); ``key(s)`` and ``*key`` (``api_key``, ``encryption_key``,
    ``signingKey``, a bare ``key``; not ``sort_key``, ``exclude_keys``, ``monkey``).
    """
    words = _words(str(key))
    return any(_secret_word(words, i) for i in range(len(words)))


# -- references ----------------------------------------------------------------------------


def is_reference(value: Any) -> bool:
    """Whether ``value`` is exactly one ``${...}`` interpolation (braces balanced)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    if not (text.startswith("${") and text.endswith("}")):
        return False
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return False
    return depth == 0


def _split_top(text: str) -> tuple[str, str | None]:
    """``text`` split at its first comma outside braces, brackets and quotes."""
    depth, quote = 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == "," and depth == 0:
            return text[:i], text[i + 1 :]
    return text, None


def _redact_reference(value: str, *, secret: bool) -> str:
    """A ``${...}`` reference with its literal secrets redacted.

    A node reference (``${db.password}``) and ``${oc.env:NAME}`` are kept; the default of
    ``${oc.env:NAME,default}`` is redacted when the key or the variable's name is secret;
    under a secret key any other resolver call (its arguments may be the secret) is redacted.
    """
    text = value.strip()
    inner = text[2:-1]
    head, sep, args = inner.partition(":")
    if not sep or "${" in head:  # a node reference: ${a.b}, ${..c}
        return value
    if head.strip() == "oc.env":
        name, default = _split_top(args)
        if default is None or not (secret or is_secret_key(name)):
            return value
        kept = default.strip()
        if is_reference(kept):
            kept = _redact_reference(kept, secret=True)
        elif kept not in ("", "null", REDACTED):
            kept = REDACTED
        return f"${{oc.env:{name.strip()},{kept}}}"
    return REDACTED if secret else redact_text(value)


def redact_scalar(value: Any, *, secret: bool) -> Any:
    """One leaf: :data:`REDACTED` under a secret key, else its text redacted; a ``${...}``
    reference keeps its shape (:func:`_redact_reference`)."""
    if value is None:
        return None
    if isinstance(value, str):
        if is_reference(value):
            return _redact_reference(value, secret=secret)
        if secret:
            return value if value == REDACTED else REDACTED
        return redact_text(value)
    return REDACTED if secret else value


# -- free text -----------------------------------------------------------------------------
_HOST_END = r"(?=[\w\-.\[\]%]+(?::\d*)?(?:[/?#\s'\"<>,;)\]}`|]|$))"
_URL = re.compile(
    # One slash too: a URL that went through pathlib (`https:/u:p@h/x`, in a message).
    # `\:` too: Hydra escapes the colons of a swept value when it writes a multirun job's
    # overrides (`dataset.path=https\://u\:p@h/x` in overrides.yaml, override_dirname).
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]+\\?:/{1,3})"
    r"(?:(?P<user>[^\s:/?#@'\"<>]*):(?P<password>[^\s'\"<>]*?)|(?P<token>[^\s:/?#@'\"<>]+))"
    rf"@{_HOST_END}"
)
_KEY_CHARS = r"[\w.\-/@+~]"
_VALUE = (
    r"'(?:[^'\\\n]|\\.)*'"  # 'single-quoted'
    r'|"(?:[^"\\\n]|\\.)*"'  # "double-quoted"
    r'|\\"(?:[^"\\\n]|\\[^"])*\\"'  # \"quoted\" inside a JSON string
    r"|\$\{(?:[^{}\n]|\{[^{}\n]*\})*\}"  # ${an interpolation}
    r"|\[[^\[\]\n]*\]|\{[^{}\n]*\}"  # [a, flow, list] or {a: flow, dict: 1}
    r"|\w+\([^()\n]*\)"  # choice(a,b), interval(1,2)
    # A bare value, with the other values of a grid (`s1,s2`) up to the next `key=`.
    rf"|[^\s,;&'\"`<>(){{}}\[\]]+(?:,(?!{_KEY_CHARS}+[ \t]*[:=])[^\s,;&'\"`<>(){{}}\[\]]+)*"
)
_PAIR = re.compile(
    rf"(?:(?P<q>['\"])|(?<!{_KEY_CHARS}))(?P<key>{_KEY_CHARS}*[A-Za-z]{_KEY_CHARS}*)(?(q)(?P=q))"
    rf"(?P<sep>[ \t]*[:=][ \t]*)(?P<value>{_VALUE})"
)
_ENV_DEFAULT = re.compile(r"\$\{oc\.env:(?:[^{}\n]|\{[^{}\n]*\})*\}")
_SHAPES = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|\bgithub_pat_\w{20,}"
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}|\bxox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bhf_[A-Za-z0-9]{30,}"
    r"|\beyJ[\w\-]{8,}\.[\w\-]{8,}\.[\w\-]{8,}",
    re.S,
)
_BEARER = re.compile(r"\b(?P<word>[Bb]earer)(?P<sp>\s+)(?!\*\*\*)[A-Za-z0-9._~+/=\-]+")
#: Every secret shape holds one of these; text with none of them is returned as it is.
_HINT = re.compile(
    r"pass|pwd|secret|token|key|auth|cred|bearer|jwt|cookie|sig|otp|mfa|webhook|@|PRIVATE|"
    r"gh[opusr]_|github_pat|sk-|xox|AKIA|ASIA|hf_|eyJ",
    re.I,
)


_REDACTED_DIGEST = re.compile(r"\*\*\*#[0-9a-f]{8}")
#: What is left of a redacted flow container once this is removed: nothing.
_DONE = re.compile(r"\*\*\*|[\w.\-]+[ \t]*:(?!//)|[\[\]{},\s]")


def _url(m: re.Match[str]) -> str:
    if m["token"] is not None:
        token = m["token"]
        keep = token in (REDACTED, "git") or is_reference(token)
        return f"{m['scheme']}{token if keep else REDACTED}@"
    password = m["password"]
    if password in ("", REDACTED) or is_reference(password):
        return m.group(0)
    return f"{m['scheme']}{m['user']}:{REDACTED}@"


def _pair(m: re.Match[str]) -> str:
    key, value = m["key"], m["value"]
    head = m.group(0)[: m.start("value") - m.start(0)]
    if not is_secret_key(key):
        # {user: u, password: p}, 'a=1 token=t', f(password=p): the pairs inside.
        inner = _PAIR.sub(_pair, value) if value[0] in "'\"\\{[" or value[-1] == ")" else value
        return head + inner
    if _REDACTED_DIGEST.fullmatch(value) or _DONE.sub("", value) == "":
        return m.group(0)  # already redacted (`***#1a2b3c4d` in a dirname, `[***,***]`)
    if value.startswith("${"):
        new = _redact_reference(value, secret=True) if is_reference(value) else REDACTED
    elif value[0] in "'\"":
        new = f"{value[0]}{REDACTED}{value[0]}"
    elif value.startswith('\\"'):
        new = f'\\"{REDACTED}\\"'
    elif m["q"] and ":" in m["sep"]:
        new = f"{m['q']}{REDACTED}{m['q']}"  # {"key": 5} stays valid JSON
    else:
        new = REDACTED
    return head + new


def _env_default(m: re.Match[str]) -> str:
    text = m.group(0)
    return _redact_reference(text, secret=False) if is_reference(text) else text


def _hinted(text: str) -> bool:
    """Whether ``text`` holds a word a secret shape needs, or a key of ``secret_keys``
    (a key like ``wandb_blob`` holds none of the built-in hint words)."""
    return bool(_HINT.search(text)) or any(p.search(text) for p in _EXTRA_KEYS)


def redact_text(text: str) -> str:
    """Mask every secret shape in free text (see the module docstring)."""
    if isinstance(text, str) and _MASKED:
        text = _mask(text)
    if not isinstance(text, str) or not _hinted(text):
        return text
    text = _SHAPES.sub(REDACTED, text)
    text = _URL.sub(_url, text)
    text = _BEARER.sub(lambda m: f"{m['word']}{m['sp']}{REDACTED}", text)
    if "oc.env:" in text:
        text = _ENV_DEFAULT.sub(_env_default, text)
    return _PAIR.sub(_pair, text)


def might_hold_secret(text: str) -> bool:
    """False only when no redaction could change ``text`` (a fast path for files)."""
    if _MASKED and any(value in text for value in _MASKED):
        return True
    if not _hinted(text):
        return False
    if _SHAPES.search(text) or _URL.search(text) or _BEARER.search(text):
        return True
    return any(
        is_secret_key(m.group(0)) for m in re.finditer(r"[A-Za-z0-9_.\-/]+", text)
        if _hinted(m.group(0))
    )  # fmt: skip


# -- structured ----------------------------------------------------------------------------
def redact_tree(obj: Any, *, secret: bool = False, path: str = "") -> Any:
    """A copy of a plain container (dicts, lists, scalars) with secrets redacted.

    Args:
        obj: The container.
        secret: Whether ``obj`` is already under a secret key.
        path: ``obj``'s dotted path (a key's meaning can hang on its parent's: ``aws.key``).
    """
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else str(k)
            out[k] = redact_tree(v, secret=secret or is_secret_key(sub), path=sub)
        return out
    if isinstance(obj, list | tuple):
        return [redact_tree(v, secret=secret, path=f"{path}.{i}") for i, v in enumerate(obj)]
    return redact_scalar(obj, secret=secret)


def redact_mapping(items: Mapping[str, Any]) -> dict[str, str]:
    """Params or tags as they may be stored: under a secret key, :data:`REDACTED` (or the
    value's ``${...}`` reference); every other value's text redacted."""
    return {k: str(redact_scalar(str(v), secret=is_secret_key(k))) for k, v in items.items()}


def redact_exception(error: BaseException) -> None:
    """Redact the message of ``error`` and of the errors it was raised from, in place.

    A failing job's error is printed by Hydra and logged as the ``runner.error`` tag; its
    message may hold what the job read (a CSV URL with its password).
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        args = tuple(redact_text(a) if isinstance(a, str) else a for a in e.args)
        if args != e.args:
            e.args = args
        if isinstance(e, OSError) and isinstance(e.filename, str):
            e.filename = redact_text(e.filename)
        for attr in ("msg", "message"):  # what some errors print instead (OmegaConf's)
            value = getattr(e, attr, None)
            if isinstance(value, str) and redact_text(value) != value:
                with contextlib.suppress(Exception):
                    setattr(e, attr, redact_text(value))
        e = e.__cause__ or e.__context__
