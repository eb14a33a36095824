"""SGLang's own answer, executed: for a plan, run SGLang 0.5.23's MoE runner resolution (server
arguments, model overrides, post-process passes, then each layer's quant method) as if on the
plan's target device, and give one :class:`~moe_registry.engines.answer.EngineAnswer` per layer
group.

The work happens in :mod:`._worker`, a child process of this interpreter (``sys.executable``): the
GPU fakes it needs never leak into the caller, a hang is bounded by :data:`TIMEOUT_S`, and one
process serves many cases (importing SGLang takes ~25 s on the CPU machine). This module itself
imports neither torch nor SGLang.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import cache
from ..answer import EngineAnswer, EngineNotInstalled, EngineRejection, executed_key
from .names import SGLANG_VERSION, kernel_family

if TYPE_CHECKING:
    from ...planner.results import ModelPlan
    from ...schemas.device import DeviceSpec
    from ...schemas.layer import ParallelConfig

TIMEOUT_S = 900


class SGLangRunFailed(RuntimeError):
    """The worker died, timed out or answered something that is not its JSON."""


@dataclass(frozen=True)
class Case:
    """One SGLang launch, as a user would type it: a checkpoint's files, the command line, and the
    MoE layers (index, module name) whose runner to read back."""

    files: dict[str, Any]
    args: tuple[str, ...]
    layers: tuple[tuple[int, str], ...]
    key: str = ""  # the caller's name for it

    def request(self) -> dict[str, Any]:
        return {"files": self.files, "args": list(self.args), "layers": [list(x) for x in self.layers]}


@dataclass(frozen=True)
class Outcome:
    """The worker's answer to one case: ``config`` is the config-time resolution (moe_runner_backend,
    quantization, moe_a2a_backend, and the steps that set them), ``layers`` one dict per layer."""

    key: str
    config: dict[str, Any] | None
    layers: tuple[dict[str, Any], ...]
    error: str | None
    log: tuple[str, ...] = field(default=())
    plugin: dict[str, Any] | None = None  # the plugin's choice and per-layer reports, when it was loaded
    seconds: dict[str, float] = field(default_factory=dict)  # SGLang's resolution and layer building, wall time


def installed_version() -> str | None:
    if importlib.util.find_spec("sglang") is None:
        return None
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_sglang() -> None:
    version = installed_version()
    if version != SGLANG_VERSION:
        found = f"sglang {version} is installed" if version else "sglang is not installed"
        raise EngineNotInstalled(f"the executed SGLang answer needs sglang=={SGLANG_VERSION} in this interpreter; {found}")


def device_request(device: DeviceSpec) -> dict[str, Any]:
    if device.vendor != "nvidia" or device.sm is None:
        raise ValueError(f"SGLang's CUDA resolution needs an NVIDIA target with a known SM, not {device.name}")
    return {"sm": device.sm, "name": device.name, "memory_gb": device.memory_gb or 80.0}


def run_cases(device: DeviceSpec, cases: list[Case], *, timeout: float = TIMEOUT_S,
              load_plugins: bool = False, cached: bool = False) -> tuple[list[Outcome], dict[str, Any]]:
    """Run every case in one worker process for ``device``; returns the outcomes (same order) and
    the worker's provenance (version, fakes, assumptions). ``load_plugins``: SGLang loads its
    ``sglang.srt.plugins`` entry points first (ours among them), as a server does; off, SGLang
    answers as if no plugin were installed. ``cached``: read and keep the answer in
    :mod:`moe_registry.cache` (kept only when every case resolved without an error)."""
    require_sglang()
    request = {"device": device_request(device), "cases": [c.request() for c in cases], "load_plugins": load_plugins}
    key = executed_key("sglang", SGLANG_VERSION, request) if cached else None
    hit = cache.read("sglang-executed", key) if key is not None else None
    if isinstance(hit, dict):
        try:
            return _outcomes(cases, hit)
        except (KeyError, TypeError, ValueError):
            pass  # an entry of another shape: ask SGLang again
    data = _run_worker(request, timeout)
    try:
        outcomes, meta = _outcomes(cases, data)
    except (KeyError, TypeError, ValueError):
        raise SGLangRunFailed("SGLang's resolution worker answered something other than one answer per case") from None
    if key is not None and all(o.error is None for o in outcomes):
        cache.write("sglang-executed", key, data)
    return outcomes, meta


def _run_worker(request: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    try:
        done = subprocess.run([sys.executable, "-m", "moe_registry.engines.sglang._worker"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise SGLangRunFailed(f"SGLang's resolution did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SGLangRunFailed(f"SGLang's resolution worker exited {done.returncode}: {last[:300]}")
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SGLangRunFailed("SGLang's resolution worker wrote no JSON answer") from None
    return data


def _outcomes(cases: list[Case], data: dict[str, Any]) -> tuple[list[Outcome], dict[str, Any]]:
    outcomes = [Outcome(c.key, a["config"], tuple(a["layers"]), a["error"], tuple(a["log"]), a.get("plugin"),
                        a.get("seconds", {})) for c, a in zip(cases, data["answers"], strict=True)]
    meta = {k: data[k] for k in ("version", "fakes", "assumptions")}
    return outcomes, meta


# --- from a plan -------------------------------------------------------------------------------


def checkpoint_files(source: str, model: str) -> dict[str, Any]:
    """The checkpoint's config files as SGLang reads them from the model directory."""
    from ...planner.sources import _load

    src = _load(model if source.startswith("preset ") else source)
    files: dict[str, Any] = {"config.json": src.config}
    if src.hf_quant_config is not None:
        files["hf_quant_config.json"] = src.hf_quant_config
    if src.quantize_config is not None:
        files["quantize_config.json"] = src.quantize_config
    return files


def launch_args(parallel: ParallelConfig, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """SGLang's command line for our layout: ``--tp-size`` is the GPUs of the MoE group and
    ``--ep-size`` the expert-parallel part of it (README "Parallel flags")."""
    if parallel.dp > 1:
        raise ValueError("DP layouts are not mapped to SGLang (its --dp-size means attention DP)")
    args = ["--tp-size", str(parallel.tp)]
    if parallel.ep > 1:
        args += ["--ep-size", str(parallel.ep)]
    return (*args, *extra)


_SGLANG_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


def _states_dtype(config: dict[str, Any]) -> bool:
    text: dict[str, Any] = config["text_config"] if isinstance(config.get("text_config"), dict) else {}
    return any(k in c for c in (config, text) for k in ("torch_dtype", "dtype"))


def case_for_plan(plan: ModelPlan, extra: tuple[str, ...] = (), key: str = "") -> Case:
    """SGLang's launch for this plan. A config that states no dtype gets ``--dtype`` of the plan's
    hidden states (SGLang would fall back to float16; our plan assumed the layer's dtype)."""
    layers = tuple((p.layer.index or 0, p.layer.name or f"model.layers.{p.layer.index}.mlp.experts") for p in plan.layers)
    files = checkpoint_files(plan.source, plan.model)
    dtype = _SGLANG_DTYPE.get(plan.layers[0].layer.dtype) if plan.layers else None
    if dtype and "--dtype" not in extra and not _states_dtype(files["config.json"]):
        extra = ("--dtype", dtype, *extra)
    return Case(files, launch_args(plan.parallel, extra), layers, key)


def answers_from_outcome(plan: ModelPlan, outcome: Outcome, meta: dict[str, Any]) -> tuple[EngineAnswer | None, ...]:
    """One answer per ``plan.groups()``: the runner of the group's first layer (every layer of a
    group has the same shape and scheme); where layers of a group differ, the answer says so."""
    by_index = {x["index"]: x for x in outcome.layers}
    sm = plan.device.sm if plan.device else None
    steps = tuple(EngineRejection(candidate=old, reason=f"{step['source']} set moe_runner_backend={new}",
                                  source=step.get("where"))
                  for old, new, step in _runner_steps(outcome))
    assumptions = tuple(meta["assumptions"]) + tuple(meta["fakes"])
    out: list[EngineAnswer | None] = []
    for group in plan.groups():
        rows = [by_index[i] for i in group.indices if i in by_index]
        error = outcome.error or next((r["error"] for r in rows if r.get("error")), None)
        runners = sorted({r["runner"] for r in rows if r.get("runner")})
        if error or not runners:
            out.append(EngineAnswer(engine="sglang", version=meta["version"] or SGLANG_VERSION, source="executed",
                                    flag=None, kernel=None, family=None, rejected=steps,
                                    error=error or "SGLang built no MoE layer for this group", assumptions=assumptions))
            continue
        first = rows[0]
        differ = "" if len(runners) == 1 else f"; the group's layers differ: {runners}"
        kernel = f"{first['runner']} ({first['method']})" + differ
        out.append(EngineAnswer(engine="sglang", version=meta["version"] or SGLANG_VERSION, source="executed",
                                flag=first["runner"], kernel=kernel,
                                family=kernel_family(first["runner"], first["method"], sm), rejected=steps,
                                assumptions=assumptions))
    return tuple(out)


def _runner_steps(outcome: Outcome) -> list[tuple[str, str, dict[str, Any]]]:
    """The config-time steps that changed moe_runner_backend: (value replaced, new value, step)."""
    current = "auto"
    out = []
    for step in (outcome.config or {}).get("steps", []):
        value = step["fields"].get("moe_runner_backend")
        if value is not None and value != current:
            out.append((current, value, step))
            current = value
    return out


def executed_answers(plan: ModelPlan) -> tuple[EngineAnswer | None, ...]:
    """The provider registered as ("sglang", "executed")."""
    if plan.device is None:
        raise ValueError("SGLang's executed answer needs a target device (--device)")
    if plan.quant_method == "override":
        return tuple(None for _ in plan.groups())  # SGLang reads the checkpoint, not our override
    outcomes, meta = run_cases(plan.device, [case_for_plan(plan)], cached=True)
    return answers_from_outcome(plan, outcomes[0], meta)
