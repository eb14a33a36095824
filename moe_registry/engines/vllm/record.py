"""The committed record of vLLM's executed choice (``docs/parity/vllm-<version>.json``): which
deployments, what vLLM answered for each layer range, and the software it ran with.

``scripts/parity_vllm.py --execute`` writes it (needs vLLM: run in the engine venv); everything else
reads it, so the default CPU suite compares the parity document and the hand model
(:mod:`.model`) with vLLM's executed answers without vLLM installed.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...schemas.device import get_device
from ...schemas.layer import ParallelConfig
from .executed import CaseResult
from .fakes import FAKES
from .observe import LayerRecord

ROOT = Path(__file__).resolve().parents[3]
RECORDS = ROOT / "docs" / "parity"
CHECKPOINTS = "tests/fixtures/checkpoints"


@dataclass(frozen=True)
class Deployment:
    """One parity case: a model source (preset name or a checkpoint directory under the repository),
    a target device preset and our MoE layout."""

    source: str
    device: str
    tp: int = 1
    ep: int = 1

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(tp=self.tp, ep=self.ep)

    @property
    def id(self) -> str:
        return f"{self.model}@{self.device}:{self.parallel.label()}"

    @property
    def model(self) -> str:
        return self.source.rsplit("/", 1)[-1]

    def path(self) -> str:
        """What plan_model reads: a preset name, or the checkpoint directory (absolute)."""
        return str(ROOT / self.source) if "/" in self.source else self.source


DEVICES = ("h100", "b200")
# Real checkpoints of the quantized variants users run, beside the bundled presets (each with its SOURCE).
FIXTURES = (f"{CHECKPOINTS}/mixtral-8x7b-instruct-fp8", f"{CHECKPOINTS}/qwen3-30b-a3b-fp8",
            f"{CHECKPOINTS}/qwen3-30b-a3b-awq")
# Layouts that change what a rank sees: TP splits the intermediate (scale groups, FP8 block refine),
# EP changes vLLM's FP8 order on Hopper and the monolithic kernels' parallel gates.
TP_VARIANTS = ("gemma-4-26b-a4b-nvfp4", "deepseek-v3", f"{CHECKPOINTS}/qwen3-30b-a3b-fp8",
               f"{CHECKPOINTS}/mixtral-8x7b-instruct-fp8")
EP_VARIANTS = ("gemma-4-26b-a4b-nvfp4", "deepseek-v3", "gpt-oss-120b", "qwen3-30b-a3b",
               f"{CHECKPOINTS}/mixtral-8x7b-instruct-fp8")


def deployments() -> list[Deployment]:
    from ...planner import list_presets

    out = [Deployment(src, dev) for src in (*list_presets(), *FIXTURES) for dev in DEVICES]
    out += [Deployment(src, dev, tp=tp) for src in TP_VARIANTS for tp in (2, 4, 8) for dev in DEVICES]
    out += [Deployment(src, dev, ep=8) for src in EP_VARIANTS for dev in DEVICES]
    return out


def execute(items: list[Deployment], *, python: str | None = None) -> dict[str, Any]:
    """Run vLLM's selection for every deployment (children of ``python``) and return the record."""
    from ...planner import plan_model
    from .answers import case_for
    from .executed import run_cases

    cases = [case_for(plan_model(d.path(), get_device(d.device), d.parallel, select=False), get_device(d.device),
                      case_id=d.id) for d in items]
    results = run_cases(cases, python=python, timeout=3600)  # one child per device builds ~30 models
    versions = sorted({r.vllm for r in results.values() if r.vllm})
    return {
        "tool": "moe-registry vllm-selection", "vllm": versions[0] if len(versions) == 1 else versions,
        "environment": _environment(python), "fakes": [f.id + ": " + f.what for f in FAKES],
        "deployments": [{"id": d.id, "source": d.source, "device": d.device, "tp": d.tp, "ep": d.ep,
                         "result": compact(results[d.id])} for d in items],
    }


def _environment(python: str | None) -> dict[str, str]:
    import subprocess
    import sys

    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('vllm', 'torch', 'flashinfer-python', 'humming-kernels', 'transformers', 'triton') if "
            "__import__('importlib.util').util.find_spec(p.replace('-python', '').replace('-', '_')) is not None}))")
    done = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    versions = json.loads(done.stdout) if done.returncode == 0 else {}
    return {**versions, "python": platform.python_version(), "machine": f"{platform.machine()} CPU (GPU faked)"}


def compact(result: CaseResult) -> dict[str, Any]:
    """A case's result with consecutive layers of the same record merged (``layers``: their prefixes)."""
    runs: list[dict[str, Any]] = []
    for record in result.layers:
        data = record.to_json()
        prefix = data.pop("prefix")
        facts = data.get("facts") or {}
        facts.pop("prefix", None)
        if runs and runs[-1]["record"] == data:
            runs[-1]["prefixes"].append(prefix)
        else:
            runs.append({"prefixes": [prefix], "record": data})
    return {"vllm": result.vllm, "error": result.error, "assumptions": result.assumptions,
            "unobserved": result.unobserved, "runs": runs}


def expand(data: dict[str, Any], case_id: str) -> CaseResult:
    layers = []
    for run in data["runs"]:
        for prefix in run["prefixes"]:
            record = dict(run["record"])
            if record.get("facts") is not None:
                record["facts"] = {**record["facts"], "prefix": prefix}
            layers.append(LayerRecord.from_json({**record, "prefix": prefix}))
    return CaseResult(case_id, data["vllm"], layers, list(data["unobserved"]), list(data["assumptions"]),
                      error=data["error"])


def record_path(version: str) -> Path:
    return RECORDS / f"vllm-{version}.json"


def load(version: str) -> dict[str, Any]:
    return json.loads(record_path(version).read_text(encoding="utf-8"))


def results(record: dict[str, Any]) -> list[tuple[Deployment, CaseResult]]:
    out = []
    for item in record["deployments"]:
        d = Deployment(item["source"], item["device"], item["tp"], item["ep"])
        out.append((d, expand(item["result"], d.id)))
    return out
