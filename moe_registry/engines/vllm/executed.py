"""vLLM's own MoE choice, executed: the installed vLLM builds the model (its model class, layer code,
quant methods, oracles) as if on the target GPU, and :mod:`.observe` records every MoE layer.

The building happens in a child process, ``python -m moe_registry.engines.vllm.executed CASES.json``
(the caller's interpreter), so the stand-ins of :mod:`.fakes` never leak into the caller, and a hang or
crash in vLLM's import ends in one line after :data:`TIMEOUT_S`. One child per target device: vLLM
caches what it probes about the device. The parent side (:func:`run_cases`, :func:`executed_answers`)
imports neither vLLM nor torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import cache
from .observe import LayerRecord

if TYPE_CHECKING:
    from ...planner.results import ModelPlan
    from ..answer import EngineAnswer

TIMEOUT_S = 900  # a child builds every case of one device; a big model takes ~30 s on one core
INSTALL_HINT = "install vLLM to execute its selection: pip install 'moe-registry[vllm]' (vllm 0.34.x or 0.33.x)"
SUPPORTED = ("0.34.", "0.33.")


def vllm_version() -> str | None:
    """The installed vLLM's version, read from its metadata (nothing imported); None if absent."""
    if util.find_spec("vllm") is None:
        return None
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Case:
    """One model on one target under one layout, as vLLM is asked to build it."""

    id: str
    config: dict[str, Any]  # config.json
    device: str  # our device preset name
    sm: int
    memory_gb: float
    tp: int = 1  # vLLM --tensor-parallel-size
    dp: int = 1  # --data-parallel-size
    expert_parallel: bool = False  # --enable-expert-parallel
    moe_backend: str = "auto"  # --moe-backend
    hf_quant_config: dict[str, Any] | None = None  # hf_quant_config.json (ModelOpt)
    quantize_config: dict[str, Any] | None = None  # quantize_config.json (GPTQ)
    env: dict[str, str] = field(default_factory=dict)  # VLLM_* variables for this case
    plugin: str | None = None  # "observe" / "enforce": build with the plugin registered as vLLM would load it


@dataclass
class CaseResult:
    id: str
    vllm: str
    layers: list[LayerRecord]
    unobserved: list[str]  # RoutedExperts built without our hook seeing them (a class overrides it)
    assumptions: list[str]
    error: str | None = None
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)  # the plugin's log lines (plugin cases)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "vllm": self.vllm, "error": self.error, "seconds": round(self.seconds, 1),
                "unobserved": self.unobserved, "assumptions": self.assumptions,
                "layers": [r.to_json() for r in self.layers], **({"log": self.log} if self.log else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CaseResult":
        return cls(id=data["id"], vllm=data["vllm"], error=data.get("error"), seconds=data.get("seconds", 0.0),
                   unobserved=list(data.get("unobserved", [])), assumptions=list(data.get("assumptions", [])),
                   layers=[LayerRecord.from_json(r) for r in data.get("layers", [])], log=list(data.get("log", [])))


# --- Parent side ------------------------------------------------------------------------------------


def run_cases(cases: list[Case], *, python: str | None = None, timeout: float = TIMEOUT_S,
              cached: bool = False) -> dict[str, CaseResult]:
    """Run every case in children (one per device); a child that fails or times out fails its cases
    with one line. ``python``: the interpreter that has vLLM (default: this one). ``cached``: read
    and keep this interpreter's answers in :mod:`moe_registry.cache`; only clean builds are kept (a
    refusal may come from this machine, e.g. a missing import, and is asked again)."""
    results: dict[str, CaseResult] = {}
    keys = {c.id: _cache_key(c) for c in cases} if cached and python is None else {}
    for case_id, key in keys.items():
        hit = cache.read("vllm-executed", key)
        if isinstance(hit, dict):
            try:
                results[case_id] = CaseResult.from_json(hit)
            except (KeyError, TypeError, ValueError):
                pass
    by_device: dict[tuple[str, int, str | None], list[Case]] = {}
    for case in cases:  # one child per target (and plugin mode: vLLM loads a plugin once per process)
        if case.id not in results:
            by_device.setdefault((case.device, case.sm, case.plugin), []).append(case)
    for group in by_device.values():
        answered, failure = _run_child(group, python or sys.executable, timeout)
        for case in group:
            if case.id in answered:
                results[case.id] = answered[case.id]
                if case.id in keys and answered[case.id].error is None:
                    cache.write("vllm-executed", keys[case.id], answered[case.id].to_json())
            else:
                results[case.id] = CaseResult(case.id, "", [], [], [], error=failure or "no result")
    return results


def _cache_key(case: Case) -> str:
    from ..answer import executed_key
    return executed_key("vllm", vllm_version() or "", asdict(case))


def _run_child(cases: list[Case], python: str, timeout: float) -> tuple[dict[str, CaseResult], str | None]:
    """The child's answers (by case id), and why it failed (None: it exited cleanly)."""
    with tempfile.TemporaryDirectory(prefix="moe-registry-vllm-") as tmp:
        spec = Path(tmp) / "cases.json"
        out = Path(tmp) / "results.jsonl"
        spec.write_text(json.dumps([asdict(c) for c in cases]))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))}
        try:
            done = subprocess.run([python, "-m", "moe_registry.engines.vllm.executed", str(spec), str(out)],
                                  capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
            failure = None if done.returncode == 0 else _last_line(done.stderr) or f"exit status {done.returncode}"
        except subprocess.TimeoutExpired:
            failure = f"vLLM's selection did not finish within {timeout:.0f} s"
        except OSError as exc:
            failure = f"cannot run {python}: {exc.strerror or exc}"
        results = {}
        if out.exists():
            for line in out.read_text().splitlines():
                result = CaseResult.from_json(json.loads(line))
                results[result.id] = result
        return results, failure


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


def executed_answers(plan: "ModelPlan") -> "tuple[EngineAnswer | None, ...]":
    """The ``executed`` provider of :func:`~moe_registry.engines.answer.engine_answers` for vLLM."""
    from .answers import answers_for_plan

    version = vllm_version()
    if version is None or not version.startswith(SUPPORTED):
        from ..answer import EngineNotInstalled
        found = f"vllm {version} is installed; " if version else ""
        raise EngineNotInstalled(f"{found}{INSTALL_HINT}")
    return answers_for_plan(plan, version)


# --- Child side -------------------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    cases = [Case(**c) for c in json.loads(Path(argv[0]).read_text())]
    out = Path(argv[1])
    from . import fakes

    first = cases[0]
    fakes.install(fakes.Target(first.device, first.sm, first.memory_gb))
    log: list[str] = []
    if first.plugin:
        missing = _register_plugin(first, log)
    else:
        from .observe import HOOKS

        missing = HOOKS.install_all(metadata.version("vllm"))
    with out.open("w") as sink:
        for case in cases:
            start = time.perf_counter()
            log.clear()
            result = _build_case(case, missing)
            result.log = list(log)
            result.seconds = time.perf_counter() - start
            sink.write(json.dumps(result.to_json()) + "\n")
            sink.flush()
    return 0


def _register_plugin(case: Case, log: list[str]) -> list[str]:
    """The plugin as vLLM loads it (vllm.plugins.load_general_plugins calls the ``vllm.general_plugins``
    entry point of the installed moe-registry), its log kept."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.append(record.getMessage())

    logging.getLogger("vllm.moe_registry").addHandler(Keep(logging.INFO))
    logging.getLogger("vllm.moe_registry").setLevel(logging.INFO)
    os.environ["MOE_REGISTRY_VLLM"] = case.plugin or ""
    os.environ["MOE_REGISTRY_DEVICE"] = case.device
    from vllm.plugins import load_general_plugins  # finds moe-registry's entry point, as every vLLM process does

    load_general_plugins()
    return []


def _build_case(case: Case, missing: list[str]) -> CaseResult:
    from .observe import HOOKS

    version = metadata.version("vllm")
    HOOKS.reset()
    assumptions = [f"hook missing in vllm {version}: {m}" for m in missing]
    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        unobserved = _build(case, assumptions)
        return CaseResult(case.id, version, list(HOOKS.records), unobserved, assumptions)
    except Exception as exc:  # noqa: BLE001 - vLLM's refusal is the answer for its layer; record it
        if os.environ.get("MOE_REGISTRY_TRACE"):
            import traceback
            traceback.print_exc()
        return CaseResult(case.id, version, list(HOOKS.records), [], assumptions, error=_refusal(exc))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _refusal(exc: BaseException) -> str:
    """The exception on one line (errors.one_line: pydantic and transformers put the detail on later
    lines) and the innermost frame of vLLM's that raised it."""
    import traceback

    from ...errors import one_line

    frames = traceback.extract_tb(exc.__traceback__)
    marker = f"{os.sep}vllm{os.sep}"
    inside = [f for f in frames if marker in f.filename and "moe_registry" not in f.filename]
    where = f" (at vllm/{inside[-1].filename.rsplit(marker, 1)[-1]}:{inside[-1].lineno})" if inside else (
        f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else "")
    return one_line(exc, limit=300) + where


# Keys a published config may leave out that vLLM's model class reads outside the MoE layers (never a
# MoE key): filled with transformers' defaults for the sub-config, and said in the assumptions.
_COMPLETIONS = {"gemma4": ("vision_config", {"model_type": "gemma4_vision"})}


def _model_dir(case: Case, where: Path, assumptions: list[str]) -> Path:
    config = dict(case.config)
    model_type = str(config.get("model_type") or "")
    if model_type in _COMPLETIONS:
        key, value = _COMPLETIONS[model_type]
        if config.get(key) is None:
            config[key] = value
            assumptions.append(f"{key} absent from the config: transformers' defaults for {value['model_type']} "
                               "(vLLM builds the vision tower's quant config from it; no MoE layer reads it)")
    (where / "config.json").write_text(json.dumps(config))
    for name, data in (("hf_quant_config.json", case.hf_quant_config), ("quantize_config.json", case.quantize_config)):
        if data is not None:
            (where / name).write_text(json.dumps(data))
    return where


def _build(case: Case, assumptions: list[str]) -> list[str]:
    import torch  # noqa: F401 - after fakes.install
    from vllm.config import (CompilationConfig, KernelConfig, LoadConfig, ModelConfig, ParallelConfig,
                             VllmConfig)
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.utils.torch_utils import set_default_torch_dtype

    from . import fakes

    with tempfile.TemporaryDirectory(prefix="moe-registry-model-") as tmp:
        model_dir = _model_dir(case, Path(tmp), assumptions)
        model_config = ModelConfig(model=str(model_dir), skip_tokenizer_init=True, dtype="auto",
                                   language_model_only=True)
        vllm_config = VllmConfig(
            model_config=model_config,
            parallel_config=ParallelConfig(tensor_parallel_size=case.tp, data_parallel_size=case.dp,
                                           enable_expert_parallel=case.expert_parallel),
            load_config=LoadConfig(load_format="dummy"), compilation_config=CompilationConfig(mode=0),
            kernel_config=KernelConfig(moe_backend=case.moe_backend))
        with fakes.process_groups(case.tp, case.dp), set_default_torch_dtype(model_config.dtype), fakes.meta_device():
            model = get_model_loader(vllm_config.load_config).create_model(vllm_config=vllm_config,
                                                                           model_config=model_config)
    from .observe import HOOKS

    seen = {r.prefix for r in HOOKS.records}
    return [name for name, module in model.named_modules()
            if isinstance(module, RoutedExperts) and getattr(module, "layer_name", name) not in seen]


if __name__ == "__main__":  # pragma: no cover - run as the child
    sys.exit(_main(sys.argv[1:]))
