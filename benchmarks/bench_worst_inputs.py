"""The worst inputs of issue 13, each run as a fresh `moe-registry` process: what it exits with and
how long it takes. Every case must finish within a second or two on the CPU machine (except the
sleeping plugin, which is bounded by the documented per-plugin time limit): inputs beyond a bound
are refused with one line (exit 2), inputs at the bound are planned.

Run: `python benchmarks/bench_worst_inputs.py --out benchmarks/results/worst-inputs-cpu.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _host import cpu_name  # benchmarks/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moe_registry.models import preset_text  # noqa: E402
from moe_registry.planner import MAX_CONFIG_BYTES, MAX_JSON_DEPTH  # noqa: E402
from moe_registry.quant_config import MAX_NAME_CHECKS, MAX_REGEX_CHECKS  # noqa: E402
from moe_registry.registry import MAX_DECLARATIONS_PER_PLUGIN  # noqa: E402
from moe_registry.schemas.layer import MAX_EXPERTS, MAX_LAYERS  # noqa: E402

SELECT = ["select", "--top-k", "8", "--hidden", "7168", "--intermediate", "2048", "--device", "b200"]


def qwen(**changes) -> dict:
    cfg = {k: v for k, v in json.loads(preset_text("qwen3-30b-a3b")).items() if not k.startswith("_")}
    return cfg | changes


def _plugin(root: Path, name: str, body: str) -> None:
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[moe_registry]\n{name} = {name}\n")
    (root / f"{name}.py").write_text(textwrap.dedent(body))


def cases(tmp: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    out: list[tuple[str, list[str], dict[str, str]]] = []

    def config(name: str, text: str) -> str:
        path = tmp / name / "config.json"
        path.parent.mkdir()
        path.write_text(text)
        return str(path)

    out.append(("select --experts 10**12 (was 92 s)", [*SELECT[:1], "--experts", str(10**12), *SELECT[1:]], {}))
    out.append((f"select --experts 65521 (largest prime <= {MAX_EXPERTS}; EP hint by divisors)",
                [*SELECT[:1], "--experts", "65521", *SELECT[1:]], {}))
    out.append((f"select --experts {MAX_EXPERTS}", [*SELECT[:1], "--experts", str(MAX_EXPERTS), *SELECT[1:]], {}))
    out.append(("num_hidden_layers 10**12 (was unbounded memory)",
                ["explain", config("layers_1e12", json.dumps(qwen(num_hidden_layers=10**12))), "--device", "h100"], {}))
    out.append((f"num_hidden_layers {MAX_LAYERS}, all MoE, table",
                ["explain", config("layers_max", json.dumps(qwen(num_hidden_layers=MAX_LAYERS))), "--device", "h100"], {}))
    alternating = qwen(num_hidden_layers=MAX_LAYERS, quantization_config={
        "quant_method": "fp8", "weight_block_size": [128, 128],
        "ignored_layers": [f"model.layers.{i}.mlp.experts" for i in range(0, MAX_LAYERS, 2)]})
    path = config("layers_alternating", json.dumps(alternating))
    out.append((f"{MAX_LAYERS} layers alternating fp8/bf16 ({MAX_LAYERS} groups), table",
                ["explain", path, "--device", "h100"], {}))
    out.append((f"{MAX_LAYERS} layers alternating fp8/bf16, --markdown",
                ["explain", path, "--device", "h100", "--markdown"], {}))
    out.append((f"{MAX_LAYERS} layers alternating fp8/bf16, --json", ["explain", path, "--device", "h100", "--json"], {}))
    names = MAX_NAME_CHECKS // MAX_LAYERS
    path = config("names_max", json.dumps(qwen(num_hidden_layers=MAX_LAYERS, quantization_config={
        "quant_method": "fp8", "weight_block_size": [128, 128],
        "ignored_layers": [f"model.layers.{i}.self_attn.q_proj" for i in range(names - 1)] + ["lm_head*"]})))
    out.append((f"{names} ignore entries x {MAX_LAYERS} layers (name-matching limit)", ["explain", path, "--device", "h100"], {}))
    regexes = MAX_REGEX_CHECKS // MAX_LAYERS
    # The costliest admitted pattern: two overlapping loops, failing only at the end of the name.
    worst = [rf"re:.*\..*\.x{i}" for i in range(regexes)]
    path = config("regex_max", json.dumps(qwen(num_hidden_layers=MAX_LAYERS, quantization_config={
        "quant_method": "fp8", "weight_block_size": [128, 128], "ignored_layers": worst})))
    out.append((f"{regexes} worst admitted re: patterns x {MAX_LAYERS} layers (regex limit)",
                ["explain", path, "--device", "h100"], {}))
    for fmt, quant in {
        "fp8": {"quant_method": "fp8", "ignored_layers": ["re:(a+)+$"]},
        "compressed-tensors": {"quant_method": "compressed-tensors", "ignore": ["re:(.*a){25}x"], "config_groups": {
            "g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"}}}},
        "modelopt": {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                                                  "exclude_modules": [r"re:(\w+\.?)+$"]}},
        "gptq dynamic": {"quant_method": "gptq", "bits": 4, "group_size": 128, "dynamic": {"-:(m|mo|mod)+x": {}}},
    }.items():
        path = config(f"regex_{fmt.replace(' ', '_')}", json.dumps(qwen(quantization_config=quant)))
        out.append((f"catastrophic re: pattern in {fmt} (was killed at 30-60 s)", ["explain", path, "--device", "h100"], {}))
    big = tmp / "big" / "config.json"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(200 * 2**20)  # sparse: 200 MiB of NUL bytes
    out.append(("200 MiB config (was 26 s, 2.5 GB)", ["explain", str(big)], {}))
    filler = MAX_CONFIG_BYTES - len(json.dumps(qwen())) - 64
    out.append((f"config of {MAX_CONFIG_BYTES // 2**20} MiB (the size limit)",
                ["explain", config("size_max", json.dumps(qwen(_filler="x" * filler))), "--device", "h100"], {}))
    nested = '{"a": ' * 100_000 + "1" + "}" * 100_000
    out.append(("JSON nested 100,000 levels (was RecursionError)", ["explain", config("deep", nested)], {}))
    at_limit = json.dumps(qwen(_deep=json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))))
    out.append((f"JSON nested {MAX_JSON_DEPTH} levels (the depth limit)",
                ["explain", config("deep_max", at_limit), "--device", "h100"], {}))

    flood = tmp / "flood"
    _plugin(flood, "acme_flood", """
        from moe_registry.backends.reference import DECLARATION
        from moe_registry.registry import hookimpl

        @hookimpl
        def moe_registry_backends():
            base = DECLARATION.model_dump()
            return [base | {"id": f"flood-{i}"} for i in range(10_000)]
        """)
    out.append(("plugin with 10,000 declarations: backends (was 23 s)", ["backends"], {"PYTHONPATH": str(flood)}))
    at_max = tmp / "at_max"
    _plugin(at_max, "acme_many", f"""
        from moe_registry.backends.reference import DECLARATION
        from moe_registry.registry import hookimpl

        @hookimpl
        def moe_registry_backends():
            base = DECLARATION.model_dump()
            return [base | {{"id": f"many-{{i}}"}} for i in range({MAX_DECLARATIONS_PER_PLUGIN})]
        """)
    out.append((f"plugin with {MAX_DECLARATIONS_PER_PLUGIN} declarations (the limit): backends", ["backends"],
                {"PYTHONPATH": str(at_max)}))
    sleeper = tmp / "sleeper"
    _plugin(sleeper, "acme_sleeper", """
        import time
        from moe_registry.registry import hookimpl

        @hookimpl
        def moe_registry_backends():
            time.sleep(3600)
        """)
    out.append(("plugin hook sleeping 1 h: backends (bounded by the 5 s plugin time limit)", ["backends"],
                {"PYTHONPATH": str(sleeper)}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv, extra_env in cases(Path(tmp)):
            env = {**os.environ, **extra_env}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_env.get("PYTHONPATH"), str(REPO)]))
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "moe_registry.cli", *argv], capture_output=True, text=True,
                                  env=env, timeout=600)
            seconds = time.perf_counter() - t0
            err = done.stderr.strip().splitlines()
            results.append({"case": label, "exit": done.returncode, "seconds": round(seconds, 3),
                            "stdout_bytes": len(done.stdout), "stderr_lines": len(err),
                            "stderr": (err[0][:160] if err else "")})
            print(f"{seconds:7.2f} s  exit {done.returncode}  {label}" + (f"\n           {err[0][:120]}" if err else ""),
                  flush=True)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_name(), "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "method": "one fresh `python -m moe_registry.cli` process per case, "
              "wall time including interpreter start (about 0.25 s of it)", "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
