"""No test module imports triton while the suite is collected, before the interpreter tests set TRITON_INTERPRET.

The CPU tests of the Triton backends (tests/test_triton_*_cpu.py, tests/test_oai_triton_cpu.py) run their kernels in
Triton's interpreter: each sets ``TRITON_INTERPRET=1`` before it imports triton, which reads it when imported and
when it decorates a kernel. A module collected before them that imports triton (or a module that does, or decorates
a kernel) at its top level makes them skip (their ``_LATE`` guard: run alone they would be in the wrong mode) or
fail, all of them, silently in the count of passes. It happened twice on 2026-12-08 (a GPU test's probe kernel at
module level; a ``pytest.importorskip("triton")``); this check reads every test module's top level for it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# moe_registry modules that import triton when imported (the Triton backends' kernel modules and launchers)
_TRITON_MODULES = re.compile(r"^(triton(\.|$)|moe_registry\.backends\.(triton_\w+|oai_triton\w*)\.(kernels?|unpack|gemv|"
                             r"slots|steps|ops|tune)$)")


def triton_at_top_level(source: str) -> list[int]:
    """Lines of a module's top-level statements that import triton (or a module that does), ask pytest to, or
    decorate a Triton kernel, before any statement that sets TRITON_INTERPRET."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        text = ast.unparse(node)
        if "TRITON_INTERPRET" in text and "environ" in text:
            break  # the interpreter modules set it first: what follows is theirs
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        kernels = [d for d in getattr(node, "decorator_list", []) if ast.unparse(d).startswith("triton.")]
        if kernels:
            found.append(kernels[0].lineno)
        elif any(_TRITON_MODULES.match(n) for n in names) or re.search(r"importorskip\(\s*['\"]triton", text):
            found.append(node.lineno)
    return found


def test_no_test_module_imports_triton_at_collection():
    bad = {str(p.relative_to(TESTS)): lines for p in sorted(TESTS.rglob("test_*.py"))
           if (lines := triton_at_top_level(p.read_text()))}
    assert not bad, f"triton imported at a test module's top level (import it inside the test): {bad}"


def test_the_check_sees_each_form():
    assert triton_at_top_level("import triton\n") == [1]
    assert triton_at_top_level("import os\nfrom triton.compiler import ASTSource\n") == [2]
    assert triton_at_top_level('import pytest\npytest.importorskip("triton")\n') == [2]
    assert triton_at_top_level("from moe_registry.backends.triton_lowt_moe.unpack import _unpack\n") == [1]
    assert triton_at_top_level("from moe_registry.backends.triton_lowt_moe import gemv\n") == [1]
    assert triton_at_top_level("@triton.jit\ndef k(x):\n    pass\n") == [1]
    assert triton_at_top_level('@pytest.mark.parametrize("b", ["triton"])\ndef test_b(b):\n    pass\n') == []
    # allowed: after TRITON_INTERPRET is set, inside a function, the declaration, a find_spec check
    assert triton_at_top_level('import os\nos.environ.setdefault("TRITON_INTERPRET", "1")\nimport triton\n') == []
    assert triton_at_top_level("def test():\n    import triton\n") == []
    assert triton_at_top_level("from moe_registry.backends.triton_lowt_moe import DECLARATION\n") == []
    assert triton_at_top_level('import importlib.util\nok = importlib.util.find_spec("triton")\n') == []
