"""The layout's rules, checked on the source: who imports what, where names live.

See ARCHITECTURE.md. Static checks (``ast``), except the CLI's ``--help``.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import contract
from tests.conftest import ROOT

RUNNER = ROOT / "runner"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(RUNNER.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, *, top_level_only: bool) -> Iterator[tuple[str, list[str]]]:
    """``(module, names)`` of every import (``names`` empty for ``import x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.If) and _is_type_checking(node):
            continue
        elif not top_level_only or isinstance(node, ast.If | ast.Try | ast.With):
            nodes.extend(ast.iter_child_nodes(node))


def _resolve(module: str, names: list[str], known: set[str]) -> set[str]:
    """The runner modules an import loads: the module, and names that are submodules."""
    out = {module} if module in known else set()
    out |= {f"{module}.{n}" for n in names if f"{module}.{n}" in known}
    return out


def test_only_runner_tracking_imports_mlflow() -> None:
    importers = set()
    for name, path in _modules():
        if name.startswith("runner.tracking"):
            continue
        if any(m.split(".")[0] == "mlflow" for m, _ in _imports(path, top_level_only=False)):
            importers.add(name)
    # Type hints under `if TYPE_CHECKING:` are not imports; everything else counts.
    assert not importers, f"only runner/tracking/ may import mlflow: {sorted(importers)}"


def test_no_import_cycles() -> None:
    modules = dict(_modules())
    known = set(modules)
    graph = {
        # Lazy imports count too (a circle is a circle), except a package's lazy exports
        # (``__getattr__``): importing one of its submodules does not run them.
        name: set().union(
            *(
                _resolve(m, n, known)
                for m, n in _imports(path, top_level_only=path.name == "__init__.py")
            )
        )
        - {name}
        for name, path in modules.items()
    }
    # A package's __init__ is loaded before its submodules: importing runner.a.b loads runner.a.
    for name in list(graph):
        for dep in list(graph[name]):
            parts = dep.split(".")
            parents = {".".join(parts[:i]) for i in range(2, len(parts))}
            graph[name] |= {p for p in parents if not (name == p or name.startswith(p + "."))}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            # A package importing its own submodule is no cycle (Python allows it).
            pairs = itertools.pairwise(cycle)
            if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in pairs):
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            return
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*path, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def _owner_ok(importer: str, module: str) -> bool:
    """Whether ``importer`` may load ``module``: a private part belongs to its package."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            if not (importer == owner or importer.startswith(owner + ".")):
                return False
    return True


def test_no_module_imports_another_modules_private_names() -> None:
    modules = dict(_modules())
    bad = []
    for name, path in modules.items():
        for module, names in _imports(path, top_level_only=False):
            if module.split(".")[0] != "runner":
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            private = [n for n in names if n.startswith("_") and f"{module}.{n}" not in modules]
            if private or not all(_owner_ok(name, m) for m in [module, *targets]):
                bad.append(f"{name}: from {module} import {', '.join(names) or '*'}")
    assert not bad, bad


def _string_constants(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def test_every_tag_name_comes_from_the_contract() -> None:
    names = {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)}
    literal = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for name, path in _modules()
        if name != "runner.contract"
        for line, value in _string_constants(path)
        if value in names
    ]
    assert not literal, literal


def test_help_lists_only_the_jobs_config_groups(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert proc.stdout.startswith("runner is powered by Hydra."), proc.stdout[:200]
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = {line.split(":")[0] for line in groups.splitlines() if ": " in line}
    assert listed == {"backend", "dataset", "model", "sweep"}, groups


def test_commands_call_functions_not_argv() -> None:
    # Replay runs the config it built through a function call (runner.sweeps.hydra_job.
    # run_config), not by rewriting sys.argv and re-entering `python -m runner`.
    writes = []
    for name, path in _modules():
        if name == "runner.__main__":  # moves -m to the front of its own command line
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )
            for target in targets:
                base = target.value if isinstance(target, ast.Subscript) else target
                if ast.unparse(base) == "sys.argv":
                    writes.append(f"{name}:{node.lineno}")
    assert not writes, writes
