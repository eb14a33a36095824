"""Text for `run`: the report as labelled lines (lists one item a line, never a Python list)."""

from __future__ import annotations

from typing import Any


def run_lines(report: dict[str, Any], width: int = 80) -> list[str]:
    """``key: value`` per field; a list prints one ``- item`` a line (or ``none``), a per-rank table
    one line per rank."""
    from .terminal import wrap

    out: list[str] = []
    for key, value in report.items():
        label = key.replace("_", " ")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(f"{label}:")
            for i, item in enumerate(value):
                text = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in item.items())
                out += wrap(text, width, first=f"  {i}: ", indent="     ")
        elif isinstance(value, list):
            out.append(f"{label}:" + ("" if value else " none"))
            for item in value:
                out += wrap(str(item), width, first="- ", indent="  ")
        else:
            out += wrap(f"{label}: {value}", width, indent="    ")
    return out
