"""Module-level imports of moe_registry form no cycle, and the torch-free parts load without torch.

The graph is read from the source with ast (no module is imported): an edge A -> B for every
``import`` / ``from ... import`` that runs when A is first imported (module level, outside
``if TYPE_CHECKING:``); imports inside functions are deferred on purpose and not edges.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "moe_registry"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                test = node.test
                name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
                if name != "TYPE_CHECKING":
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return out


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the moe_registry modules it imports at module level (``deferred``: anywhere)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        nodes = ([n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if deferred
                 else _top_level_imports(tree))
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
                targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules else base_name
                           for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_reader_sees_relative_imports_and_cycles():
    graph = import_graph()
    assert "moe_registry.measured" in graph["moe_registry.measure.bench"]
    assert "moe_registry.measure.timing" in graph["moe_registry.measure.bench"]
    assert "moe_registry.schemas.layer" in graph["moe_registry.selection"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_moe_registry_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_the_cli_even_inside_a_function():
    # The CLI is the top: a library module reaching up into it (bench's old `from .cli import _console`)
    # is a cycle that deferred imports hide from the module-level graph.
    graph = import_graph(deferred=True)
    assert "moe_registry.measure.bench" in graph["moe_registry.cli"]  # the reader sees deferred imports
    assert [m for m in graph if "moe_registry.cli" in graph[m]] == []


def test_cost_table_analysis_and_report_load_without_torch():
    code = """
import sys
sys.modules['torch'] = None  # any import of torch now fails
from moe_registry.measure import analysis, report
from moe_registry.measured import CostEntry, CostTable
from moe_registry.schemas.device import PRESETS
from moe_registry.schemas.layer import LayerSpec
layer = LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32)
entries = [CostEntry(backend=b, layer=layer, tokens=t, median_us=us) for b, pts in
           {"a": ((1, 10.0), (64, 100.0)), "b": ((1, 30.0), (64, 50.0))}.items() for t, us in pts]
table = CostTable(device=PRESETS["h100"], entries=tuple(entries))
print(analysis.crossover(table, layer, "a", "b"), analysis.winners(table, layer), sys.modules['torch'] is not None)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    # a/b = T^(ln 6 / ln 64) / 3 between the measured points: equal at T = 12.8, so b wins from 13.
    assert done.stdout == "13 {1: 'a', 64: 'b'} False\n", done.stdout
