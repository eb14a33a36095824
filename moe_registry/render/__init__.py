"""Rendering for the CLI: rich tables for people, Markdown for bug reports, JSON for tools.

Everything here is derived from Selections, ModelPlans and declarations; nothing is decided here.
The JSON shapes are documented in docs/cli-json.md (``schema_version`` changes on any break).

One module per job: ``terminal`` (the console, escaping), ``selection`` (one layer's selection and
the text pieces plans reuse), ``plan`` (a model's plan), ``matrix`` (the capability matrix). The
names below are the package's interface (``render.console()``, ``render.plan_json`` ...); patch a
function in the module that uses it, not here.
"""

from __future__ import annotations

from .matrix import (
    activation_cell,
    matrix_json,
    matrix_markdown,
    print_matrix,
    quant_cell,
    verification_text,
)
from .plan import (
    compact_range,
    compact_shape,
    faster_rejections,
    plan_json,
    plan_markdown,
    print_plan,
    verified_cell,
)
from .selection import (
    JSON_SCHEMA_VERSION,
    engine_flags,
    layer_range,
    padding_text,
    print_rejections,
    print_selection,
    rejections_markdown,
    selection_json,
    selection_markdown,
    shape_text,
    weights_text,
)
from .terminal import console, escape_control, safe_console

__all__ = [
    "JSON_SCHEMA_VERSION", "activation_cell", "compact_range", "compact_shape", "console", "engine_flags",
    "escape_control", "faster_rejections", "layer_range", "matrix_json", "matrix_markdown", "padding_text",
    "plan_json", "plan_markdown", "print_matrix", "print_plan", "print_rejections", "print_selection",
    "quant_cell", "rejections_markdown", "safe_console", "selection_json", "selection_markdown", "shape_text",
    "verification_text", "verified_cell", "weights_text",
]
