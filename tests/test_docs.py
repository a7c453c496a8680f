"""Every command shown in README.md and docs/*.md still runs, and every relative link resolves.

The convention (also in docs/development.md, "Commands in the docs"):

- Only fenced ```` ```bash ```` blocks hold commands; ```` ```text ```` blocks are output,
  ```` ```yaml ````/```` ```python ```` blocks are files. One command a line; a line ending in
  ``\\`` continues on the next; ``# ...`` after the command is a comment.
- ``<!-- docs-test: skip REASON -->`` on the line before a block skips it (a command that
  needs a cluster, a server, your own app); ``test_skipped_blocks_say_why`` lists them.
- Placeholders: ``<name>`` stands for a run id, ``[...]`` marks optional parts (they are
  checked as if given), ``a|b`` alternatives (the first is checked), a lone ``...`` is
  dropped. Leading ``VAR=value`` assignments and ``export`` lines set the environment.
- Known commands and how each is checked, without running the job:

  - ``python -m runner ...`` / ``runner ...``: Hydra's own argument parser takes the flags;
    the overrides are composed with Hydra's compose API (the hydra node included), once per
    value of every sweep (the first value of a range, the start of an interval), so an
    unknown key, group option or ``hydra.sweeper.*`` key fails.
  - ``python -m runner.<command> ...`` and ``python benchmarks/<name>.py ...``: parsed by
    the very parser the command's ``main`` builds, and every ``--flag`` must be one of its
    option strings spelled out (argparse would accept an abbreviation).
  - ``mlflow <command> ...``: parsed by MLflow's click CLI.
  - ``python -m pytest ...``: accepted.

  Anything else in a bash block fails: mark the block skipped, or use a known form.

Everything runs in this process (the parsers are imported, not started): the whole file
takes a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import runpy
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The two set-up commands a newcomer copies; kept byte for byte.
SETUP = (
    '    python3.11 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" '
    "&& python -m runner\n",
    "    python -m pytest\n",
)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b\s*(?P<reason>.*?)\s*-->")
#: What a ``<placeholder>`` becomes: a well-formed (if absent) MLflow run id.
RUN_ID = "0" * 32


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """A fenced bash block: where it starts, its text, and the skip reason if marked."""

    path: Path
    line: int
    text: str
    skip: str | None


@dataclass(frozen=True)
class Command:
    """One command of a block, as shell words."""

    path: Path
    line: int
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        rel = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name
        return f"{rel}:{self.line}"


def bash_blocks(path: Path) -> list[Block]:
    """The fenced ``bash`` blocks of a markdown file (``sh``/``shell``/``console`` too)."""
    blocks: list[Block] = []
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        lang = fence[3:].strip().lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        if lang in ("bash", "sh", "shell", "console"):
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = SKIP.search(prev)
            blocks.append(
                Block(path, i + 2, "\n".join(lines[i + 1 : j]), m["reason"] if m else None)
            )
        i = j + 1
    return blocks


def _words(line: str) -> list[str]:
    # shlex's own comment handling ends a word at any `#` (`a#b` is `a`); only a word that
    # starts with `#` begins a comment here.
    lex = shlex.shlex(line, posix=True)
    lex.whitespace_split = True
    lex.commenters = ""
    words: list[str] = []
    for w in lex:
        if w.startswith("#"):
            break
        words.append(w)
    return words


def _normalize(word: str) -> str | None:
    """A documented word as the command would get it (see the module docstring)."""
    if word == "...":
        return None
    word = re.sub(r"<[^<>\s]+>", RUN_ID, word)
    if word.startswith("[") and word.endswith("]"):
        word = word[1:-1]  # `[--all]`: an option, never a Hydra value (those follow a key=)
    if word.startswith("[") and word.count("[") > word.count("]"):
        word = word[1:]
    if word.endswith("]") and word.count("]") > word.count("["):
        word = word[:-1]
    if re.fullmatch(r"[\w.-]+(\|[\w.-]+)+", word):
        word = word.split("|")[0]
    return word or None


def commands(block: Block) -> list[Command]:
    """The commands of a block, continuation lines joined, comments and environment dropped."""
    out: list[Command] = []
    lines = block.text.split("\n")
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        words = _words(line)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)  # VAR=value before a command: its environment
        if not words or words[0] == "export":
            continue
        norm = tuple(w for w in map(_normalize, words) if w is not None)
        out.append(Command(block.path, block.line + start, norm))
    return out


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [b for f in doc_files(root) for b in bash_blocks(f)]


# -- the checks ----------------------------------------------------------------------------


class DocError(AssertionError):
    """A documented command that would not run, with what is wrong."""


class _Captured(Exception):
    """Not an error: carries the parser a command built out of its ``main``."""

    def __init__(self, parser: argparse.ArgumentParser, method: str) -> None:
        self.parser, self.method = parser, method


@contextlib.contextmanager
def _capturing_parsers() -> Iterator[None]:
    """While active, the first parse of any ArgumentParser raises ``_Captured`` instead."""
    cls = argparse.ArgumentParser
    saved = {m: getattr(cls, m) for m in ("parse_args", "parse_intermixed_args")}
    saved_known = cls.parse_known_args

    def raiser(method: str) -> Callable[..., Any]:
        def f(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
            raise _Captured(self, method)

        return f

    try:
        for m in saved:
            setattr(cls, m, raiser(m))
        cls.parse_known_args = raiser("parse_args")  # type: ignore[method-assign]
        yield
    finally:
        for m, f in saved.items():
            setattr(cls, m, f)
        cls.parse_known_args = saved_known  # type: ignore[method-assign]


_PARSERS: dict[str, tuple[argparse.ArgumentParser, str]] = {}


def parser_of(target: str) -> tuple[argparse.ArgumentParser, str]:
    """The parser ``python -m MODULE`` (or ``python SCRIPT``) builds, and how it parses."""
    if target in _PARSERS:
        return _PARSERS[target]
    path = sys.path[:]
    try:
        with _capturing_parsers():
            if target.endswith(".py"):
                script = ROOT / target
                if not script.is_file():
                    raise DocError(f"{target} does not exist")
                argv, sys.argv = sys.argv, [str(script)]
                try:
                    runpy.run_path(str(script), run_name="__main__")
                finally:
                    sys.argv = argv
            else:
                try:
                    mod = importlib.import_module(target)
                    if hasattr(mod, "__path__") and not hasattr(mod, "main"):
                        mod = importlib.import_module(target + ".__main__")
                except ImportError as e:
                    raise DocError(f"no module {target}: {e}") from None
                main = getattr(mod, "main", None)
                if main is None:
                    raise DocError(f"module {target} has no main()")
                main([])
    except _Captured as c:
        _PARSERS[target] = (c.parser, c.method)
        return _PARSERS[target]
    finally:
        sys.path[:] = path
    raise DocError(f"{target} returned without parsing its arguments")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_argparse(target: str, args: list[str]) -> None:
    """``args`` parse with ``target``'s own parser, every ``--flag`` spelled as it names it."""
    parser, method = parser_of(target)
    known = {s for a in parser._actions for s in a.option_strings}
    sub = _subparsers(parser)
    chosen = next((a for a in args if a in sub), None)
    if chosen is not None:
        known |= {s for a in sub[chosen]._actions for s in a.option_strings}
    for a in args:
        flag = a.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            raise DocError(f"{target} has no option {flag}; it has {', '.join(sorted(known))}")
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            getattr(parser, method)(args)
    except SystemExit as e:
        if e.code not in (0, None):  # 0: --help
            raise DocError(f"{target} refuses {args}: {err.getvalue().strip()}") from None


def _sweep_values(override: Any) -> list[str]:
    """The values a job of the sweep may get: every choice, a range's first, an interval's start."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep

    value = override.value()
    if isinstance(value, IntervalSweep):
        return [str(value.start)]
    if isinstance(value, ChoiceSweep):
        return list(override.sweep_string_iterator())
    return list(override.sweep_string_iterator())[:1]


def hydra_jobs(args: list[str]) -> tuple[argparse.Namespace, list[list[str]]]:
    """Hydra's flags of a ``python -m runner`` line, and the override lists of its jobs."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from runner.__main__ import normalize_argv

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns = get_args_parser().parse_args(normalize_argv(args))
    except SystemExit as e:
        if e.code not in (0, None):
            raise DocError(f"Hydra refuses {args}: {err.getvalue().strip()}") from None
        return argparse.Namespace(help=True), []
    if ns.config_dir or ns.config_path or ns.config_name:
        raise DocError("--config-dir/--config-path/--config-name: mark the block skipped")
    try:
        parsed = OverridesParser.create().parse_overrides(ns.overrides)
    except HydraException as e:
        raise DocError(f"Hydra cannot parse {ns.overrides}: {e}") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not ns.multirun:
        raise DocError(f"sweep overrides without -m: {[o.input_line for o in sweeps]}")
    firsts = {id(o): f"{o.get_key_element()}={_sweep_values(o)[0]}" for o in sweeps}
    jobs = [fixed + list(firsts.values())]
    for o in sweeps:
        for v in _sweep_values(o)[1:]:
            others = [s for k, s in firsts.items() if k != id(o)]
            jobs.append([*fixed, *others, f"{o.get_key_element()}={v}"])
    return ns, jobs


def check_hydra(args: list[str]) -> None:
    """Every job of a ``python -m runner`` line composes (flags parsed, config not run)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from runner.config import CONFIG_MODULE, register

    _, jobs = hydra_jobs(args)
    register()
    module = CONFIG_MODULE.removeprefix("pkg://")
    for overrides in jobs:
        try:
            with initialize_config_module(config_module=module, version_base="1.3"):
                compose("config", overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException, OSError) as e:
            # OSError: Hydra's MissingConfigException (an unknown group option) is one.
            raise DocError(f"{overrides} does not compose: {type(e).__name__}: {e}") from None


def check_mlflow(args: list[str]) -> None:
    """An ``mlflow`` command line parses with MLflow's click CLI."""
    import click
    from mlflow.cli import cli

    try:
        ctx = cli.make_context("mlflow", list(args))
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, cmd, rest = cli.resolve_command(ctx, rest)
        if cmd is None:
            raise DocError(f"mlflow has no command {rest[:1]}")
        cmd.make_context(name or "", rest, parent=ctx)
    except click.exceptions.Exit:
        return
    except click.ClickException as e:
        raise DocError(f"mlflow refuses {args}: {e.format_message()}") from None


def check(cmd: Command) -> None:
    """Raise DocError unless ``cmd`` is a known form that would run."""
    w = list(cmd.words)
    if w[:3] == ["python", "-m", "runner"] or w[:1] == ["runner"]:
        check_hydra(w[3:] if w[0] == "python" else w[1:])
    elif w[:2] == ["python", "-m"] and len(w) > 2 and w[2].startswith("runner."):
        check_argparse(w[2], w[3:])
    elif w[:1] == ["python"] and len(w) > 1 and w[1].startswith("benchmarks/"):
        check_argparse(w[1], w[2:])
    elif w[:1] == ["mlflow"]:
        check_mlflow(w[1:])
    elif w[:3] == ["python", "-m", "pytest"]:
        pass
    else:
        raise DocError(
            f"unknown command form {' '.join(w)!r}: use a known one (tests/test_docs.py) or "
            "mark the block <!-- docs-test: skip REASON -->"
        )


# -- links ---------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    return {
        slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", _outside_fences(path.read_text()), re.M)
    }


def broken_links(files: list[Path]) -> list[str]:
    """Each relative link (and #anchor in a markdown page) that points at nothing."""
    bad: list[str] = []
    for f in files:
        text = _outside_fences(f.read_text())
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m[1]
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            file, _, anchor = target.partition("#")
            dest = (f.parent / file).resolve() if file else f
            if not dest.exists():
                bad.append(f"{f.name}: {target} (no such file: {dest})")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{f.name}: {target} (no heading #{anchor} in {dest.name})")
    return bad


# -- the tests -----------------------------------------------------------------------------

BLOCKS = all_blocks()
COMMANDS = [c for b in BLOCKS if b.skip is None for c in commands(b)]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_documented_command_runs(cmd: Command) -> None:
    try:
        check(cmd)
        error = None
    except DocError as e:
        error = str(e)
    if error is not None:
        pytest.fail(f"{cmd.where}: {' '.join(cmd.words)}\n  {error}", pytrace=False)


def test_the_docs_show_commands() -> None:
    # The collection above must find the pages' commands, not silently nothing.
    forms = {c.words[2] if c.words[:2] == ("python", "-m") else c.words[0] for c in COMMANDS}
    for module in ("runner", "runner.compare", "runner.replay", "runner.diff",
                   "runner.lifecycle", "runner.server", "runner.sync", "mlflow"):  # fmt: skip
        assert module in forms, module
    assert len(COMMANDS) >= 40


def test_skipped_blocks_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    skipped = [b for b in BLOCKS if b.skip is not None]
    with capsys.disabled():
        print(f"\ndocs-test: {len(skipped)} bash block(s) not checked:")
        for b in skipped:
            print(f"  {b.path.relative_to(ROOT)}:{b.line}: {b.skip}")
    assert all(b.skip for b in skipped), "a skip marker needs a reason"


def test_links_resolve() -> None:
    bad = broken_links(doc_files())
    assert not bad, "broken links (pages still to be written?):\n  " + "\n  ".join(bad)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in doc_files()[1:] if f"(docs/{p.name})" not in readme]
    assert not missing, f"docs pages the README's index does not link: {missing}"


def test_the_set_up_commands_are_unchanged() -> None:
    readme = (ROOT / "README.md").read_text()
    for line in SETUP:
        assert line in readme, line


# The checker itself must be able to say no: each of these is wrong in one way.
BAD = [
    ("python -m runner.compare --experiment iris --no-such-flag", "no option --no-such-flag"),
    ("python -m runner.compare --exper iris", "no option --exper"),  # an abbreviation
    ("python -m runner.lifecycle prune-failed --older-than", "refuses"),
    ("python -m runner.lifecycle no-such-command", "refuses"),
    ("python -m runner.nosuch --x", "no module"),
    ("python -m runner model=nosuch", "does not compose"),
    ("python -m runner no_such_key=1", "does not compose"),
    ("python -m runner seed=abc", "does not compose"),
    ("python -m runner -m model=logreg,nosuch", "does not compose"),
    ("python -m runner -m hydra/sweeper=optuna hydra.sweeper.n_trialz=3", "does not compose"),
    ("python -m runner model=logreg,rf", "without -m"),
    ("python -m runner --no-such-hydra-flag", "Hydra refuses"),
    ("mlflow ui --no-such-option", "mlflow refuses"),
    ("python benchmarks/bench_runner.py --no-such", "no option"),
    ("ls -l", "unknown command form"),
]


@pytest.mark.parametrize(("line", "why"), BAD, ids=[b[0] for b in BAD])
def test_the_check_catches(line: str, why: str, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"text\n\n```bash\n{line}   # a comment\n```\n")
    (cmd,) = commands(bash_blocks(page)[0])
    with pytest.raises(DocError, match=re.escape(why)):
        check(cmd)


def test_conventions(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- docs-test: skip needs a cluster -->\n```bash\nsbatch x\n```\n\n"
        "```bash\nexport A=1\nB=2 python -m runner.replay <run_id> \\\n    --check  # c\n"
        "python -m runner.lifecycle tag-best --experiment iris --metric m"
        " [--direction maximize|minimize]\n"
        "```\n```text\nnot a command\n```\n"
    )
    skipped, block = bash_blocks(page)
    assert skipped.skip == "needs a cluster" and block.skip is None
    replay, tag_best = commands(block)
    assert replay.words == ("python", "-m", "runner.replay", RUN_ID, "--check")
    assert tag_best.words[-2:] == ("--direction", "maximize")
    for c in (replay, tag_best):
        check(c)


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Title here\n\n[ok](a.md#title-here) [x](b.md) [y](a.md#nope)\n"
    )
    bad = broken_links([tmp_path / "a.md"])
    assert len(bad) == 2 and "b.md" in bad[0] and "#nope" in bad[1]
