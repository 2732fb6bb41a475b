"""The package's shape: no import cycles between sfspec modules, and the compiler below the spec layer.

Imports are read from the source (``ast``), not by importing anything. Imports under
``if TYPE_CHECKING:`` are left out: they never run (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "sfspec"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """The sfspec modules one import statement names ('from a import b' names a and, if a module, a.b)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return {n for n in names if n in MODULES}


def imports_of(module: str, lazy: bool) -> set[str]:
    """sfspec modules ``module`` imports: at module level, and with ``lazy`` inside functions too."""
    path = MODULES[module]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom) and (top or lazy):
                found.update(_imported(child, module, path.name == "__init__.py"))
            visit(child, top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(path.read_text()), True)
    return found - {module}


def cycles(lazy: bool) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    graph = {m: imports_of(m, lazy) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return found


def test_the_import_reader_sees_module_and_function_level_imports():
    budget = imports_of("sfspec.compiler.budget", lazy=False)
    assert "sfspec.compiler.plan" in budget and "sfspec.runtime.config" not in budget
    assert "sfspec.runtime.config" in imports_of("sfspec.compiler.budget", lazy=True)  # inside estimate_memory
    assert "sfspec.compiler.plan" not in imports_of("sfspec.compiler.model", lazy=True)  # TYPE_CHECKING only


def test_no_import_cycles_between_sfspec_modules():
    """What runs on import: module-level imports of every sfspec module form no cycle."""
    assert cycles(lazy=False) == []


def test_no_import_cycle_through_the_compiler_even_counting_imports_inside_functions():
    """Function-level imports too, for every cycle that passes through the compiler, pipeline or summary."""
    mine = ("sfspec.compiler", "sfspec.pipeline", "sfspec.summary", "sfspec.sourcemap")
    assert [c for c in cycles(lazy=True) if any(m.startswith(mine) for m in c)] == []


def test_the_compiler_imports_no_spec_runtime_or_export_module_at_module_level():
    """The compiler sits below the spec layer: the spec schema reads the compiler's registries, not the reverse."""
    above = ("sfspec.spec", "sfspec.runtime", "sfspec.export", "sfspec.cli", "sfspec.pipeline", "sfspec.summary")
    reached = {
        (module, imported)
        for module in MODULES
        if module.startswith("sfspec.compiler")
        for imported in imports_of(module, lazy=False)
        if imported.startswith(above)
    }
    assert reached == set()
