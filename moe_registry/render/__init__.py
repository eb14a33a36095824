"""Rendering for the CLI: plain text for people, Markdown for bug reports, JSON for tools.

Everything here is derived from Selections, ModelPlans, engine answers and declarations; nothing is
decided here. The JSON shapes are documented in docs/cli-json.md (``schema_version`` changes on any
break).

One module per job: ``terminal`` (the console, escaping, plain-text tables), ``selection`` (one
layer's selection and the text pieces plans reuse), ``plan`` (a model's plan), ``deploy`` (the
engines' defaults and what to type), ``matrix`` (the capability matrix), ``measure`` (run / bench /
probe text). The names below are the package's interface (``render.plan_json`` ...), imported on
first use so `explain` does not load the matrix or rich; patch a function in the module that uses
it, not here.
"""

from __future__ import annotations

import importlib
from typing import Any

JSON_SCHEMA_VERSION = 1  # every JSON document the CLI writes carries it (docs/cli-json.md)

_EXPORTS = {
    "activation_cell": "matrix", "matrix_json": "matrix", "matrix_markdown": "matrix", "print_matrix": "matrix",
    "quant_cell": "matrix", "verification_text": "matrix",
    "compact_range": "plan", "compact_shape": "plan", "faster_rejections": "plan", "plan_json": "plan",
    "plan_lines": "plan", "plan_markdown": "plan", "print_plan": "plan", "verified_cell": "plan",
    "advice_json": "deploy", "engine_defaults": "deploy",
    "engine_flags": "selection", "layer_range": "selection", "padding_text": "selection",
    "print_selection": "selection", "reason_lines": "selection", "rejections_markdown": "selection",
    "selection_json": "selection", "selection_lines": "selection", "selection_markdown": "selection",
    "shape_text": "selection", "weights_text": "selection",
    "run_lines": "measure",
    "console": "terminal", "escape_control": "terminal", "terminal_width": "terminal", "safe_console": "terminal",
    "write_lines": "terminal",
}

__all__ = ["JSON_SCHEMA_VERSION", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
