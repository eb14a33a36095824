"""Bundled model presets: real published ``config.json`` content, one JSON file per model.

A preset file is the model's ``config.json`` (at least every MoE-relevant key, spelt and nested
as in the published file, quantization config included) plus metadata keys that start with
``_``, which the planner strips before reading the config:

``_source`` (required)
    Where the values came from, and which of them are not verified against the model's Hub repo.
``_model_id``
    The Hugging Face id of the checkpoint; ``plan_model`` accepts it in place of the preset name.
``_quantized_from``
    For a quantized export without a verified Hub id of its own: the id of the model it was made from.
``_hf_quant_config``
    The content of the checkpoint's ``hf_quant_config.json`` (ModelOpt), when it has one.

Nothing here imports torch; the planner (:mod:`moe_registry.planner`) reads these files.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

META_PREFIX = "_"


def _files():
    return resources.files(__name__)


def preset_names() -> tuple[str, ...]:
    """Sorted names of the bundled presets (file names without ``.json``)."""
    return tuple(sorted(p.name[:-5] for p in _files().iterdir() if p.name.endswith(".json")))


def preset_text(name: str) -> str | None:
    """The raw JSON text of a preset, or None if there is no such preset."""
    path = _files() / f"{name}.json"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def load_preset(name: str) -> dict[str, Any] | None:
    """A preset's parsed JSON (metadata keys included), or None if there is no such preset."""
    text = preset_text(name)
    return None if text is None else json.loads(text)
