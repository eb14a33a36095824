"""Loading a model source: a bundled preset (by name or Hugging Face id), a model directory or a
``config.json`` path -> :class:`_Source` (the config and its quantization companions), with bounded
JSON reading (``MAX_CONFIG_BYTES``, ``MAX_JSON_DEPTH``) that accepts what Python's json module and
transformers accept (``Infinity`` included); non-finite numbers are refused where they are used."""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from .._files import read_regular_file
from ..errors import UnusablePath, one_line
from .. import models as _presets
from .results import ConfigNotFound, MalformedConfig, UnknownPreset


class _Source(NamedTuple):  # not a frozen dataclass: ~4x cheaper to define, and explain's start-up counts (issue 20)
    model: str
    source: str
    config: dict[str, Any]
    model_id: str | None = None
    provenance: str | None = None
    quantized_from: str | None = None
    hf_quant_config: Any = None
    hf_quant_source: str = ""
    quantize_config: Any = None
    quantize_source: str = ""


MAX_CONFIG_BYTES = 8 * 2**20  # real config.json / quant configs are kilobytes; the largest ~1 MiB
MAX_JSON_DEPTH = 64  # real configs nest about 6 levels


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:  # iterative: a deep document must not exhaust the Python stack here either
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


def _parse_json(text: str, where: str) -> Any:
    if len(text) > MAX_CONFIG_BYTES:
        raise MalformedConfig(f"{where} is {len(text)} characters; the limit is {MAX_CONFIG_BYTES}")
    try:
        # What Python's json module and transformers read: NaN / Infinity / -Infinity and 1e999 too
        # (Nemotron-3-Super's config.json holds "time_step_limit": [0.0, Infinity]). A non-finite
        # number is refused where the planner uses one (an integer key, swiglu_limit), never
        # carried into output, which stays strict JSON.
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedConfig(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise MalformedConfig(f"{where} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # integers over Python's digit limit
        raise MalformedConfig(f"{where} is not valid JSON: {one_line(exc, typed=False)}") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise MalformedConfig(f"{where} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    return data


def _read_json(path: Path) -> Any:
    try:
        # A regular file only, size-checked before reading: a FIFO or /dev/zero must not hang or fill memory.
        text = read_regular_file(path, limit=MAX_CONFIG_BYTES, what="config file").decode("utf-8")
    except UnusablePath as exc:
        raise MalformedConfig(str(exc)) from None
    except FileNotFoundError:
        raise ConfigNotFound(f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise MalformedConfig(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigNotFound(f"cannot read {path}: {exc.strerror or exc}") from None
    return _parse_json(text, str(path))


def _from_path(path: Path) -> _Source:
    config_path = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not config_path.is_file():
        raise ConfigNotFound(f"{path} has no config.json")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise MalformedConfig(f"{config_path} must hold a JSON object, not {type(config).__name__}")
    directory = config_path.parent
    companions = {}
    for fname in ("hf_quant_config.json", "quantize_config.json"):
        candidate = directory / fname
        if candidate.is_file() and candidate != config_path:
            companions[fname] = (_read_json(candidate), str(candidate))
    hf = companions.get("hf_quant_config.json", (None, ""))
    gptq = companions.get("quantize_config.json", (None, ""))
    name = directory.name if path.is_dir() or config_path.name == "config.json" else config_path.stem
    return _Source(model=name or str(config_path), source=str(config_path), config=config,
                   model_id=config.get("_name_or_path") if isinstance(config.get("_name_or_path"), str) else None,
                   hf_quant_config=hf[0], hf_quant_source=hf[1], quantize_config=gptq[0], quantize_source=gptq[1])


def _from_preset(name: str) -> _Source:
    text = _presets.preset_text(name)
    if text is None:  # pragma: no cover - names come from preset_names()
        raise UnknownPreset(f"no bundled preset {name!r}")
    data = _parse_json(text, f"preset {name}")
    if not isinstance(data, dict):
        raise MalformedConfig(f"preset {name} must hold a JSON object")
    config = {k: v for k, v in data.items() if not k.startswith(_presets.META_PREFIX)}
    return _Source(model=name, source=f"preset {name}", config=config, model_id=data.get("_model_id"),
                   provenance=data.get("_source"), quantized_from=data.get("_quantized_from"),
                   hf_quant_config=data.get("_hf_quant_config"),
                   hf_quant_source=f"preset {name} hf_quant_config.json")


def _find_preset(text: str) -> str | None:
    key = text.strip().lower().removesuffix(".json")
    names = _presets.preset_names()
    if key in names:
        return key
    for name in names:  # a preset's Hugging Face id works too ("Qwen/Qwen3-30B-A3B")
        model_id = (_presets.load_preset(name) or {}).get("_model_id")
        if isinstance(model_id, str) and model_id.lower() == key:
            return name
    return None


def _load(source: str | os.PathLike[str]) -> _Source:
    if not isinstance(source, (str, os.PathLike)):
        raise UnknownPreset(f"model source must be a preset name or a path, not {type(source).__name__}")
    text = os.fspath(source)
    if not isinstance(text, str) or not text.strip():
        raise UnknownPreset("empty model source; give a preset name, a model directory or a config.json path")
    if "\0" in text:
        raise ConfigNotFound("model source contains a NUL character")
    try:
        path = Path(text).expanduser()
        exists = path.exists()
    except (OSError, RuntimeError) as exc:  # name too long, unknown ~user
        raise ConfigNotFound(f"cannot use {text[:80]!r} as a path: {getattr(exc, 'strerror', None) or exc}") from None
    if exists:
        return _from_path(path)
    preset = _find_preset(text)
    if preset is not None:
        return _from_preset(preset)
    looks_like_path = (text.endswith(".json") or text.startswith((".", "/", "~")) or text.count("/") > 1
                       or (os.sep != "/" and os.sep in text))
    if looks_like_path:
        raise ConfigNotFound(f"no such file or directory: {text}")
    raise UnknownPreset(f"{text!r} is neither a bundled preset (or a preset's Hugging Face id) nor an existing "
                        f"model directory or config.json; presets: {', '.join(_presets.preset_names())}")
