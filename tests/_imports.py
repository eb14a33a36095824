"""The import graph of moe_registry, read from the source with ast (no module is imported).

An edge A -> B for every ``import`` / ``from ... import`` of a moe_registry module in A. ``scope``:
"module" (what runs when A is first imported: module level, outside ``if TYPE_CHECKING:``),
"runtime" (anything that can run, imports inside functions included, ``if TYPE_CHECKING:`` blocks not),
"all" (every import statement). Shared by test_import_graph.py and test_layers.py.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "moe_registry"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
    return name == "TYPE_CHECKING"


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return out


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(scope: Literal["module", "runtime", "all"] = "module") -> dict[str, set[str]]:
    """Module -> the moe_registry modules it imports (within ``scope``)."""
    found = modules()
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        nodes = (_top_level_imports(tree) if scope == "module" else _runtime_imports(tree) if scope == "runtime"
                 else [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))])
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub when there is one.
                targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in found else base_name
                           for a in node.names]
            graph[name].update(t for t in targets if t in found and t != name)
    return graph
