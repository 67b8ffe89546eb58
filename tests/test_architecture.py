"""The package's shape stays as docs/design.md draws it: no import cycles (function-level imports
included), no module over 500 lines, no function over 100, and the kernels know nothing of torch or
the rest.

Imports are read from the source (``ast``), so a cycle hidden in a function body counts too.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"gpustats": ROOT / "gpustats", "gpustats.kernels": ROOT / "kernels"}
MAX_LINES = 500
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST, typing: bool = False):
    """Every node, except under ``if TYPE_CHECKING:`` (imports for annotations only never run) unless ``typing``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not typing and isinstance(child, ast.If) \
                    and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _imports(modules: dict[str, Path], typing: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``typing``: ``if TYPE_CHECKING:`` imports too)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for node in _runtime_nodes(tree, typing):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets.add(base)
                targets |= {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its submodules is not a dependency of theirs on it."""
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    return {name: {t for t in targets if not (t in packages and name.startswith(t + "."))}
            for name, targets in graph.items()}


def test_no_import_cycles_function_level_imports_included():
    graph = _without_package_inits(_imports(_modules()))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_cycles_type_checking_imports_included():
    """An import made for annotations only is still a dependency of the reader's: the state and its
    result (stats.py, results.py) had one each way; stats.py owns the step from state to result."""
    graph = _without_package_inits(_imports(_modules(), typing=True))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_type_checking_imports_are_read_only_when_asked(tmp_path):
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (tmp_path / "b.py").write_text("from .a import A\n")
    modules = {"p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}
    assert _cycle(_imports(modules)) is None
    assert _cycle(_imports(modules, typing=True)) == ["p.a", "p.b", "p.a"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_test_or_bench_file_over_500_lines():
    """The same limit for tests/ and bench/: a long file is split by subject (shared helpers in an
    underscore module that pytest does not collect, e.g. tests/_never_crash_helpers.py)."""
    long = [f"{path.relative_to(ROOT).as_posix()} ({n} lines)" for folder in ("tests", "bench")
            for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines, split by subject: {', '.join(long)}"


def _long_functions(source: str, limit: int) -> dict[str, int]:
    """``{name:line: length}`` of the functions (methods and nested ones included) longer than ``limit``
    lines, from the first decorator to the last line of the body (docstring included)."""
    long = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if (length := node.end_lineno - start + 1) > limit:
                long[f"{node.name}:{node.lineno}"] = length
    return long


def test_no_function_over_100_lines():
    """Split by what the code does (plan, loop, finish), not by line count."""
    long = {f"{name}.{where}": n for name, path in _modules().items()
            for where, n in _long_functions(path.read_text(), MAX_FUNCTION_LINES).items()}
    assert not long, long


def test_the_function_measure_counts_decorators_docstrings_and_nested_functions():
    source = '@cache\ndef outer():\n    """doc"""\n    def inner():\n        pass\n    return inner\n'
    assert _long_functions(source, 5) == {"outer:2": 6}
    assert _long_functions(source, 1) == {"outer:2": 6, "inner:4": 2}
    assert _long_functions(source, 6) == {}


def test_the_command_imports_no_private_name_of_the_library():
    """What the command uses of the library is the library's public surface (argparse, one call, report)."""
    for name in ("gpustats.cli", "gpustats.cli_checks"):
        tree = ast.parse(_modules()[name].read_text())
        private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.name.startswith("_") and not alias.name.endswith("__")]
        assert not private, (name, private)


def test_kernels_know_nothing_of_torch_or_the_package():
    for name, path in _modules().items():
        if not name.startswith("gpustats.kernels"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for imported in names:
                assert not imported.startswith(("torch", "gpustats")), (name, imported)


def test_no_file_refers_to_a_folder_outside_the_repository():
    """A user's clone has only the repository: the design record is docs/design.md, in it."""
    # spelled in pieces, so that this file does not name the folder itself
    folder = "shared"
    outside = ("/".join(("..", folder)), "/".join(("", "work", folder)), "/".join((folder, "DESIGN.md")))
    for top, dirs, files in os.walk(ROOT):
        if Path(top) == ROOT:  # not into .git, .venv and the like (walking them took seconds)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(top) / name
            if path.suffix in (".py", ".md", ".toml", ".txt", ".sh"):
                _refers_to_none(path, outside)
    assert (ROOT / "docs" / "design.md").is_file()


def _refers_to_none(path: Path, outside: tuple) -> None:
    if path.is_file():
        text = path.read_text(errors="replace")
        found = [name for name in outside if name in text]
        assert not found, f"{path.relative_to(ROOT)} refers to {found[0]}"
