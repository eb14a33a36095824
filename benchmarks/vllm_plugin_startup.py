"""What the vLLM plugin adds to vLLM's start-up and model load, side by side with the plugin off.

    VENV/bin/python benchmarks/vllm_plugin_startup.py [--repeats 7] [--out benchmarks/results/vllm-plugin-cpu.json]

Run with the interpreter that has vLLM installed (scripts/engine_tests.sh vllm builds one). Two costs:

- start-up: vLLM calls the entry point in every process (API server, engine core, workers). Timed:
  vLLM's own ``load_general_plugins()`` in a fresh interpreter that imported ``vllm.plugins``, with
  ``VLLM_PLUGINS=""`` (no plugin loaded: the baseline), with moe-registry's entry point allowed but
  ``MOE_REGISTRY_VLLM`` unset, and with ``MOE_REGISTRY_VLLM=enforce``; each the median of N runs.
- model load: vLLM builds Qwen3-30B-A3B (48 MoE layers) and Gemma 4 NvFP4 (30) through its own code
  with the target faked (engines/vllm/fakes.py, so no weights: the build alone), with the hooks off,
  in observe and in enforce mode (report included); one child, modes interleaved, the median of N
  builds after a warm-up build of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_REGISTER = """
import time
import vllm.plugins  # vLLM has imported this (and much more) before it loads plugins
t = time.perf_counter()
vllm.plugins.load_general_plugins()
print(time.perf_counter() - t)
"""

_LOAD = """
import json, os, sys, time
from moe_registry.engines.vllm import fakes
fakes.install(fakes.Target("b200", 100, 180))
os.environ["MOE_REGISTRY_DEVICE"] = "b200"
from importlib import metadata
from moe_registry.engines.vllm import plugin
from moe_registry.engines.vllm.observe import HOOKS
from moe_registry.planner import plan_model
from moe_registry.schemas.device import get_device
from moe_registry.engines.vllm.answers import case_for
from moe_registry.engines.vllm.executed import _build
plugin.STATE.version = metadata.version("vllm")
modes = ("off", "observe", "enforce")
out = {mode: {} for mode in modes}


def build(case, mode):
    HOOKS.uninstall()
    HOOKS.reset()
    HOOKS.decide = plugin._decide if mode == "enforce" else None
    plugin.STATE.mode = mode
    if mode != "off":
        HOOKS.install_all(plugin.STATE.version)
    t = time.perf_counter()
    _build(case, [])
    if mode != "off":
        plugin.report("bench")  # the table and fingerprint, as after vLLM's create_model
    return time.perf_counter() - t


for model in ("qwen3-30b-a3b", "gemma-4-26b-a4b-nvfp4"):
    case = case_for(plan_model(model, get_device("b200")), get_device("b200"))
    for mode in modes:  # warm-up: imports, vLLM's model inspection cache, the registry, selection caches
        build(case, mode)
    for mode in modes:
        out[mode][model] = []
    for _ in range(int(sys.argv[2])):
        for mode in modes:  # interleaved, so the shared machine's drift hits every mode alike
            out[mode][model].append(build(case, mode))
print(json.dumps(out))
"""


def _run(code: str, args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1800,
                          cwd=ROOT, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm-plugin-cpu.json"))
    args = parser.parse_args()
    from importlib import metadata

    startup = {}
    for label, env in (("no plugins", {"VLLM_PLUGINS": "", "MOE_REGISTRY_VLLM": ""}),
                       ("installed, off", {"VLLM_PLUGINS": "moe_registry", "MOE_REGISTRY_VLLM": ""}),
                       ("enforce", {"VLLM_PLUGINS": "moe_registry", "MOE_REGISTRY_VLLM": "enforce"})):
        startup[label] = [float(_run(_REGISTER, [], env)) for _ in range(args.repeats)]
    load = json.loads(_run(_LOAD, ["all", str(args.repeats)], {}))
    med = {k: statistics.median(v) * 1e3 for k, v in startup.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared)",
        "vllm": metadata.version("vllm"), "python": platform.python_version(), "repeats": args.repeats,
        "load_general_plugins_ms": {k: round(v, 2) for k, v in med.items()},
        "added_ms": {"installed, off": round(med["installed, off"] - med["no plugins"], 2),
                     "enforce": round(med["enforce"] - med["no plugins"], 2)},
        "model_load_s": {mode: {m: round(statistics.median(t), 3) for m, t in per.items()} for mode, per in load.items()},
        "model_load_added_pct": {mode: {m: round(100 * (statistics.median(t) / statistics.median(load["off"][m]) - 1), 1)
                                        for m, t in load[mode].items()} for mode in ("observe", "enforce")},
        "raw": {"register_s": startup, "model_load_s": load},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
