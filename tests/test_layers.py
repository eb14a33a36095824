"""The package's layers (docs/ARCHITECTURE.md, "Layers"): no module imports one from a layer above it.

Two checks. Read from the source (ast): every import a module can run, at module level or deferred
inside a function (only ``if TYPE_CHECKING:`` blocks are left out), points at its own layer or one
below. Run for real: each layer's modules import in a fresh interpreter where every module of the
layers above it fails to import.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from _imports import PKG, REPO, import_graph, modules

# Lowest first. A module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors", "schemas", "_isolation", "_files", "cache")),
    ("rules", ("environment", "registry", "selection", "quant_config", "memory", "models", "measured")),
    ("planning", ("planner", "engines")),
    ("kernels", ("formats", "execution", "backends")),
    ("instruments", ("verify", "measure", "distributed", "provenance", "backends.triton_fused_moe.tune")),
    ("presentation", ("render", "verify.report", "measure.report")),
    # The vLLM plugin is an entry point vLLM calls, like the CLI: it may reach every layer.
    ("interface", ("cli", "engines.vllm.plugin")),
)
# The package itself is the lazy public facade: Python imports it before any submodule, so reading
# ``__version__`` from it is free, and its deferred exports point everywhere by design.
FACADE = "moe_registry"
MODULES = modules()


def layer_of(module: str) -> int:
    rel = module.removeprefix(FACADE + ".")
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (rel == prefix or rel.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/ARCHITECTURE.md)")
    return level


_RUNTIME = import_graph("runtime")


def runtime_imports(module: str) -> set[str]:
    """The moe_registry modules ``module`` can import at run time (module level or deferred)."""
    return _RUNTIME[module]


def upward_imports() -> list[str]:
    problems = []
    for module in MODULES:
        if module == FACADE:
            continue
        mine = layer_of(module)
        for target in sorted(runtime_imports(module)):
            if target != FACADE and layer_of(target) > mine:
                problems.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    return problems


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != FACADE:
            layer_of(module)


def test_the_reader_sees_deferred_imports_and_skips_type_checking_ones():
    # errors imports the schemas only for annotations; render's provenance lines are read lazily.
    assert "moe_registry.schemas.layer" not in runtime_imports("moe_registry.errors")
    assert "moe_registry.verify.record" in runtime_imports("moe_registry.provenance")


def test_no_module_imports_from_a_layer_above_it():
    assert upward_imports() == []


def test_an_upward_import_is_reported(monkeypatch):
    real = runtime_imports
    fake = {"moe_registry.selection": real("moe_registry.selection") | {"moe_registry.planner"}}
    monkeypatch.setattr(sys.modules[__name__], "runtime_imports", lambda m: fake.get(m) or real(m))
    assert upward_imports() == ["moe_registry.selection (rules) imports moe_registry.planner (planning)"]


_BLOCKER = """
import importlib, importlib.abc, sys
blocked = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in blocked:
            raise ImportError(f"{{name}} is above this layer")
        return None
sys.meta_path.insert(0, Block())
for name in {mine!r}:
    importlib.import_module(name)
print("ok", len({mine!r}))
"""


@pytest.mark.parametrize("level", range(len(LAYERS)), ids=[name for name, _ in LAYERS])
def test_each_layer_imports_without_the_layers_above(level):
    # Every module of the layer is imported for real (kernel modules import torch and triton at module level;
    # optional kernel packages such as humming are imported inside functions).
    mine = [m for m in MODULES if m != FACADE and layer_of(m) == level]
    blocked = [m for m in MODULES if m != FACADE and layer_of(m) > level]
    code = _BLOCKER.format(blocked=blocked, mine=mine)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"ok {len(mine)}"


# --- The picture and the sizes ----------------------------------------------------------------------------

ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
# Modules allowed over ~500 lines, each saying why in its docstring (the phrase below).
LONG_MODULES = {"moe_registry.cli", "moe_registry.engines.vllm.model"}
MAX_LINES = 520


def tree_paths() -> set[str]:
    """Module paths named by the layout tree in docs/ARCHITECTURE.md (one line per module)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = text[text.index("## Layout"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    paths, stack = set(), []  # stack of (indent, directory)
    for line in block.splitlines()[1:]:  # the first line is the package root with column titles
        name = line.split()[0] if line.strip() else ""
        if not name or not name.endswith((".py", "/")):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "".join(d for _, d in stack)
        if name.endswith("/"):
            stack.append((indent, name))
        else:
            paths.add(prefix + name)
    return paths


def test_the_architecture_tree_names_every_module_once():
    actual = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py")}
    listed = tree_paths()
    assert sorted(actual - listed) == [], "modules missing from docs/ARCHITECTURE.md's layout tree"
    assert sorted(listed - actual) == [], "the layout tree names modules that do not exist"


def test_no_module_is_over_about_500_lines_unless_it_says_why():
    for module, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if module in LONG_MODULES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert "longer than the ~500 lines" in doc, f"{module}: say why it is long"
        else:
            assert lines <= MAX_LINES, f"{module} has {lines} lines: split it (or say why and list it here)"
