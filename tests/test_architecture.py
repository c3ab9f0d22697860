"""The package's layout rules (issue 14), checked on its source: parsed with ast, nothing imported.

1. No import cycles between sandbox's modules. Imports inside functions count (they run, only
   later); imports under `if TYPE_CHECKING:` do not (they never run). Importing a.b.c also runs
   the packages a and a.b, but a package's __init__ is not an edge of its own: re-exporting
   submodules there is no cycle.
2. Only the command line imports the command line: nothing outside sandbox/cli/ (and
   sandbox/__main__.py, which starts it) imports sandbox.cli.
3. No module over MAX_LINES lines, except the syscall tables of ALLOWED_LARGE.
4. The top level of sandbox/ holds at most MAX_TOP_LEVEL modules besides __init__ and __main__.
5. Only sandbox/cli/ reads the process's arguments (sys.argv, sys.orig_argv).

Each rule is a function of a package directory, so the checker itself is tested on planted trees
(a cycle it must catch, a TYPE_CHECKING import it must not count), then run on the real package.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import PACKAGE_PARENT

PACKAGE = "sandbox"
CLI = f"{PACKAGE}.cli"
MAX_LINES = 600
MAX_TOP_LEVEL = 5
# Modules that may exceed MAX_LINES, each with its reason: syscall tables only (data, one entry a
# line, checked against the kernel's headers), never logic. Empty while the x86_64 table fits; a
# stale entry (a module gone or back under the limit) fails test_allowed_large_entries_are_needed.
ALLOWED_LARGE: dict[str, str] = {}
ARGV = ("argv", "orig_argv")


@dataclass(frozen=True)
class Module:
    name: str  # dotted: sandbox.warm.api; a package's __init__ by the package's name
    path: str  # relative to the package's parent: sandbox/warm/api.py
    is_package: bool
    tree: ast.Module = field(repr=False)
    lines: int


@dataclass(frozen=True)
class Edge:
    target: str
    line: int  # the first import of target in the importing module


def load(parent: Path, package: str = PACKAGE) -> dict[str, Module]:
    """Every module of the package under `parent`, parsed (never imported)."""
    found = {}
    for path in sorted((parent / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        text = path.read_text()
        found[".".join(parts)] = Module(".".join(parts), str(path.relative_to(parent)), is_package,
                                        ast.parse(text, str(path)), len(text.splitlines()))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: all of them but the bodies of `if TYPE_CHECKING:` (their else runs)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _absolute(module: Module, level: int, name: str | None) -> str:
    """The absolute name of `from .NAME import ...` written in `module`."""
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(module: Module, modules: dict[str, Module]) -> dict[str, Edge]:
    """The package's modules that `module` imports at run time, each with its first line."""
    edges: dict[str, Edge] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # `import a.b.X` where X is not a module: a.b
            target = target.rpartition(".")[0]
        if target and target != module.name and (target not in edges or line < edges[target].line):
            edges[target] = Edge(target, line)

    for node in runtime_nodes(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module) if node.level else node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                # `from pkg import sub` imports the submodule; `from pkg import name` the package.
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.split(".")[0] == PACKAGE):
            add(node.args[0].value, node.lineno)  # importlib.import_module("sandbox.x"); computed names can't be seen
    return edges


def graph(modules: dict[str, Module]) -> dict[str, dict[str, Edge]]:
    return {name: imports(module, modules) for name, module in modules.items()}


def _reachable(edges: dict[str, dict[str, Edge]], start: str) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for target in edges[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _shortest_cycle(edges: dict[str, dict[str, Edge]], start: str, within: set[str]) -> list[str]:
    """start, ..., start: the fewest imports leading from start back to it inside one component."""
    came_from: dict[str, str] = {}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for target in sorted(edges[node]):
            if target == start:
                path = [node]  # imports never name their own module: node != start
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target in within and target not in came_from:
                came_from[target] = node
                todo.append(target)
    raise AssertionError(f"{start} is in no cycle")


def cycles(modules: dict[str, Module]) -> list[str]:
    """One line per strongly connected component: its members, and one cycle through them with
    the line of each import."""
    edges = graph(modules)
    reach = {name: _reachable(edges, name) for name in edges}
    found, done = [], set()
    for name in sorted(edges):
        if name in done:
            continue
        component = {other for other in reach[name] if name in reach[other]}
        done |= component
        if len(component) < 2:
            continue
        path = _shortest_cycle(edges, name, component)
        steps = " -> ".join(f"{target} ({_where(modules[source], edges[source][target].line)})"
                            for source, target in zip(path, path[1:]))
        found.append(f"{len(component)} modules {sorted(component)}: {path[0]} -> {steps}")
    return found


def _where(module: Module, line: int) -> str:
    return f"{module.path}:{line}"


def _in_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def cli_importers(modules: dict[str, Module]) -> list[str]:
    return [f"{_where(modules[source], edge.line)} imports {target}"
            for source, targets in sorted(graph(modules).items()) for target, edge in sorted(targets.items())
            if _in_cli(target) and not _in_cli(source) and source != f"{PACKAGE}.__main__"]


def oversized(modules: dict[str, Module], allowed: dict[str, str]) -> list[str]:
    return [f"{_where(module, module.lines)}: {module.lines} lines (limit {MAX_LINES})"
            for name, module in sorted(modules.items()) if module.lines > MAX_LINES and name not in allowed]


def top_level(modules: dict[str, Module]) -> list[str]:
    """All the top-level modules (not subpackages, not __init__ or __main__) when there are more
    than MAX_TOP_LEVEL of them, else none."""
    found = sorted(name for name, module in modules.items()
                   if name.count(".") == 1 and not module.is_package and name != f"{PACKAGE}.__main__")
    return found if len(found) > MAX_TOP_LEVEL else []


def argv_readers(modules: dict[str, Module]) -> list[str]:
    """Reads of sys.argv / sys.orig_argv (however sys or the name is bound) outside sandbox/cli/."""
    found: list[str] = []
    for name, module in sorted(modules.items()):
        if _in_cli(name):
            continue
        sys_names = {"sys"}  # `import sys as s`: s.argv
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                sys_names |= {a.asname for a in node.names if a.name == "sys" and a.asname}
        for node in ast.walk(module.tree):
            if (isinstance(node, ast.Attribute) and node.attr in ARGV and isinstance(node.value, ast.Name)
                    and node.value.id in sys_names):
                found.append(f"{_where(module, node.lineno)} reads sys.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module == "sys" and not node.level:
                found += [f"{_where(module, node.lineno)} imports sys.{a.name}" for a in node.names if a.name in ARGV]
    return list(dict.fromkeys(found))  # `int(sys.argv[1]), int(sys.argv[2])`: one line, one offence


def _report(rule: str, offenders: list[str]) -> str:
    return "\n".join([f"{rule}: {len(offenders)} offender(s)", *(f"  {line}" for line in offenders)])


# ------------------------------------------------------------------------------ the real package

@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    modules = load(PACKAGE_PARENT)
    assert f"{PACKAGE}.cli" in modules and len(modules) > 20, sorted(modules)
    return modules


def test_no_import_cycles(package: dict[str, Module]) -> None:
    found = cycles(package)
    assert not found, _report("import cycles (function-level imports count, TYPE_CHECKING ones don't)", found)


def test_only_the_command_line_imports_the_command_line(package: dict[str, Module]) -> None:
    found = cli_importers(package)
    assert not found, _report(f"imports of {CLI} from outside it", found)


def test_no_module_over_the_line_limit(package: dict[str, Module]) -> None:
    found = oversized(package, ALLOWED_LARGE)
    assert not found, _report(f"modules over {MAX_LINES} lines (split them by concern)", found)


def test_allowed_large_entries_are_needed(package: dict[str, Module]) -> None:
    stale = [name for name in ALLOWED_LARGE if name not in package or package[name].lines <= MAX_LINES]
    assert not stale, f"ALLOWED_LARGE entries no longer needed: {stale}"


def test_top_level_holds_a_handful_of_modules(package: dict[str, Module]) -> None:
    found = top_level(package)
    assert not found, _report(f"top-level modules (at most {MAX_TOP_LEVEL}: move them into subpackages)", found)


def test_only_the_command_line_reads_argv(package: dict[str, Module]) -> None:
    found = argv_readers(package)
    assert not found, _report(f"argument reads outside {CLI}", found)


# ------------------------------------------------------------------------------ the checker itself

def plant(root: Path, files: dict[str, str]) -> dict[str, Module]:
    """A package tree of `files` (path under root: source; every directory a package) under root."""
    for rel, text in {"sandbox/__init__.py": "", "sandbox/cli/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if str(parent) != "." and not (root / parent / "__init__.py").exists():
                (root / parent / "__init__.py").write_text("")
        path.write_text(text)
    return load(root)


CYCLE_CASES = [
    # (case, files, the components found)
    ("function-level import closes a cycle",
     {"sandbox/a.py": "from sandbox import b\n",
      "sandbox/b.py": "def f():\n    from . import a\n    return a\n"},
     [["sandbox.a", "sandbox.b"]]),
    ("TYPE_CHECKING imports don't count",
     {"sandbox/a.py": "from sandbox import b\n",
      "sandbox/b.py": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from .a import A\n"},
     []),
    ("typing.TYPE_CHECKING neither, but its else branch runs",
     {"sandbox/a.py": "import sandbox.b\n",
      "sandbox/b.py": "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    from sandbox.a import A\n"},
     [["sandbox.a", "sandbox.b"]]),
    ("relative imports across subpackages, three modules",
     {"sandbox/p/m.py": "from ..q.n import x\n",
      "sandbox/q/n.py": "class C:\n    def f(self):\n        from ..r import o\n",
      "sandbox/r/o.py": "try:\n    import sandbox.p.m as m\nexcept ImportError:\n    m = None\n"},
     [["sandbox.p.m", "sandbox.q.n", "sandbox.r.o"]]),
    ("importlib with a literal name counts",
     {"sandbox/a.py": "import importlib\nb = importlib.import_module('sandbox.b')\n",
      "sandbox/b.py": "from .a import b\n"},
     [["sandbox.a", "sandbox.b"]]),
    ("a package's __init__ re-exporting its submodules is no cycle",
     {"sandbox/p/__init__.py": "from .m import x\n", "sandbox/p/m.py": "from sandbox.p.n import y\nx = y\n",
      "sandbox/p/n.py": "y = 1\n"},
     []),
    ("importing a name from a package's __init__ is an edge to the package",
     {"sandbox/p/__init__.py": "from sandbox.q import z\n",
      "sandbox/q/__init__.py": "def f():\n    from sandbox.p import x\n"},
     [["sandbox.p", "sandbox.q"]]),
    ("two separate cycles, a module importing itself is none",
     {"sandbox/a.py": "import sandbox.b\nimport sandbox.a\n", "sandbox/b.py": "import sandbox.a\n",
      "sandbox/c.py": "from . import d\n", "sandbox/d.py": "from . import c\n", "sandbox/e.py": "from . import a\n"},
     [["sandbox.a", "sandbox.b"], ["sandbox.c", "sandbox.d"]]),
]


@pytest.mark.parametrize("case,files,components", CYCLE_CASES, ids=[c[0] for c in CYCLE_CASES])
def test_cycle_checker(tmp_path: Path, case: str, files: dict[str, str], components: list[list[str]]) -> None:
    found = cycles(plant(tmp_path, files))
    assert [line.split(": ", 1)[0] for line in found] == [f"{len(c)} modules {c}" for c in components], found


def test_a_cycle_is_shown_with_its_import_lines(tmp_path: Path) -> None:
    found = cycles(plant(tmp_path, {"sandbox/warm/api.py": "import os\n\ndef f():\n    from ..cli import main\n",
                                    "sandbox/cli/main.py": "from sandbox.warm.api import f\n"}))
    assert found == ["2 modules ['sandbox.cli.main', 'sandbox.warm.api']: sandbox.cli.main -> "
                     "sandbox.warm.api (sandbox/cli/main.py:1) -> sandbox.cli.main (sandbox/warm/api.py:4)"], found


RULE_CASES = [
    # (case, files, rule, offenders)
    ("cli importing cli, __main__ importing cli: fine",
     {"sandbox/cli/main.py": "from . import box\n", "sandbox/cli/box.py": "",
      "sandbox/__main__.py": "from .cli.main import main\n"},
     cli_importers, []),
    ("a library module importing cli, at any depth",
     {"sandbox/cli/main.py": "", "sandbox/warm/api.py": "def f():\n    from ..cli.main import parse\n",
      "sandbox/image/commit.py": "from sandbox import cli\n"},
     cli_importers,
     ["sandbox/image/commit.py:1 imports sandbox.cli", "sandbox/warm/api.py:2 imports sandbox.cli.main"]),
    ("a TYPE_CHECKING import of cli is fine",
     {"sandbox/cli/main.py": "",
      "sandbox/warm/api.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sandbox.cli.main\n"},
     cli_importers, []),
    ("argv read in cli: fine; elsewhere, however it is spelled",
     {"sandbox/cli/main.py": "import sys\nargs = sys.argv[1:]\n",
      "sandbox/warm/zygote.py":
          '"""Reads sys.argv."""\nimport sys\ndef main():\n    return int(sys.argv[1]), int(sys.argv[2])\n',
      "sandbox/runtime/scope.py": "import sys as s\nfrom sys import orig_argv\nx = s.orig_argv\n"},
     argv_readers,
     ["sandbox/runtime/scope.py:2 imports sys.orig_argv", "sandbox/runtime/scope.py:3 reads sys.orig_argv",
      "sandbox/warm/zygote.py:4 reads sys.argv"]),
    (f"line limit: {MAX_LINES} lines fine, one more not",
     {"sandbox/p/ok.py": "x = 1\n" * MAX_LINES, "sandbox/p/big.py": "x = 1\n" * (MAX_LINES + 1)},
     lambda modules: oversized(modules, {}),
     [f"sandbox/p/big.py:{MAX_LINES + 1}: {MAX_LINES + 1} lines (limit {MAX_LINES})"]),
    ("line limit: an allowed table",
     {"sandbox/seccomp/table.py": "x = 1\n" * (MAX_LINES + 1)},
     lambda modules: oversized(modules, {"sandbox.seccomp.table": "a syscall table"}), []),
    (f"top level: {MAX_TOP_LEVEL} modules fine (packages, __init__ and __main__ aside)",
     {"sandbox/__main__.py": "", "sandbox/p/__init__.py": "", "sandbox/p/m.py": "",
      **{f"sandbox/m{i}.py": "" for i in range(MAX_TOP_LEVEL)}},
     top_level, []),
    ("top level: one more is too many",
     {f"sandbox/m{i}.py": "" for i in range(MAX_TOP_LEVEL + 1)},
     top_level, [f"sandbox.m{i}" for i in range(MAX_TOP_LEVEL + 1)]),
]


@pytest.mark.parametrize("case,files,rule,offenders", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rule_checkers(tmp_path: Path, case: str, files: dict[str, str], rule: object, offenders: list[str]) -> None:
    assert rule(plant(tmp_path, files)) == offenders  # type: ignore[operator]
