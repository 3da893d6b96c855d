"""Import structure: no import cycle among the project's modules, and a core that never reaches into its clients.

- Every module imports in a fresh interpreter (no side effect or missing name hidden by another test's imports).
- The graph of module-level imports (``ast``; imports inside functions, and ``if TYPE_CHECKING:`` blocks, left out)
  has no cycle.
- Nothing under ``lemo_edge/`` (the core) imports ``lemo_edge.runtime``, ``lemo_edge.export`` or an inference
  library (onnx, onnxruntime, TensorRT, pycuda), at any level: function-level imports and ``import_module("...")``
  calls with a constant name count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Source folder -> installed package (pyproject.toml package-dir).
PACKAGES: dict[str, str] = {"lemo_edge": "lemo_edge", "export": "lemo_edge.export", "runtime": "lemo_edge.runtime"}
CORE_FORBIDDEN = ("lemo_edge.runtime", "lemo_edge.export", "onnx", "onnxruntime", "onnxscript", "tensorrt", "pycuda")


def project_modules() -> dict[str, Path]:
    """``{module name: file}`` of every module of the three packages (a package beats a same-named module)."""
    modules: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if "__pycache__" in rel.parts or not all(p.isidentifier() for p in rel.parts):
                continue
            if not all((root / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(1, len(rel.parts))):
                continue  # not inside a package (e.g. a data folder)
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if rel.name != "__init__" and (path.with_suffix("") / "__init__.py").is_file():
                continue  # shadowed by the package of the same name
            modules[".".join((package, *parts))] = path
    return modules


MODULES = project_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom | ast.Call]:
    """Import statements (and ``import_module``/``__import__`` calls) below ``node``.

    ``module_level``: skip function bodies and ``if TYPE_CHECKING:`` blocks (what runs when the module is imported).
    """
    for child in ast.iter_child_nodes(node):
        if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if module_level and isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports(other, module_level)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.Call):
            func = child.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and child.args and isinstance(child.args[0], ast.Constant):
                yield child
        yield from _imports(child, module_level)


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imported_names(module: str, module_level: bool) -> set[str]:
    """Fully qualified names ``module`` imports (``from X import Y``: ``X.Y`` when that is a module, else ``X``)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), str(MODULES[module]))
    names: set[str] = set()
    for node in _imports(tree, module_level):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            names.add(str(node.args[0].value))  # type: ignore[attr-defined]
        else:
            base = node.module or ""
            if node.level:
                package = _package_of(module).split(".")
                anchor = ".".join(package[: len(package) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in MODULES else base)
    return names


def module_graph() -> dict[str, set[str]]:
    """``{module: project modules it imports at module level}``."""
    return {m: {n for n in imported_names(m, module_level=True) if n in MODULES and n != m} for m in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_module_list_covers_the_packages():
    for expected in ("lemo_edge.config", "lemo_edge.export.onnx", "lemo_edge.runtime.loop", "lemo_edge.runtime"):
        assert expected in MODULES, expected


def test_find_cycles_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_project_modules():
    graph = module_graph()
    cycles = find_cycles(graph)
    described = [
        " -> ".join(cycle) + f" (edges: {sorted((a, b) for a in cycle for b in graph[a] if b in cycle)})"
        for cycle in cycles
    ]
    assert not cycles, "import cycles: " + "; ".join(described)


CORE = sorted(
    m for m in MODULES if m == "lemo_edge" or (m.startswith("lemo_edge.") and MODULES[m].parent.name == "lemo_edge")
)


@pytest.mark.parametrize("module", CORE)
def test_core_does_not_import_runtime_export_or_inference_libraries(module):
    bad = sorted(
        n
        for n in imported_names(module, module_level=False)
        if any(n == f or n.startswith(f + ".") for f in CORE_FORBIDDEN)
    )
    assert not bad, f"{MODULES[module].relative_to(REPO)} imports {bad}; the core must not depend on these"


def test_every_module_imports_in_a_fresh_interpreter():
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"modules that fail to import:\n{done.stdout}{done.stderr[-2000:]}"
