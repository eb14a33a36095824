"""Module-level imports of moe_registry form no cycle, and the torch-free parts load without torch.

The graph is read from the source with ast (tests/_imports.py): for cycles, an edge A -> B for every
import that runs when A is first imported; imports inside functions are deferred on purpose and not edges.
"""

from __future__ import annotations

import os
import subprocess
import sys

from _imports import REPO, import_graph


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
    graph = import_graph("all")
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
