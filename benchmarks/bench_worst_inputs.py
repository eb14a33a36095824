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
from moe_registry.quant_config import MAX_NAME_CHECKS, MAX_PATTERN_CHARS, MAX_PATTERN_CHECKS  # noqa: E402
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
    regexes = MAX_PATTERN_CHECKS // MAX_LAYERS
    # Among the costliest admitted patterns: as long as allowed, optional items failing at the end.
    worst = [("re:" + ".?" * MAX_PATTERN_CHARS)[: MAX_PATTERN_CHARS + 3 - len(f"X{i}")] + f"X{i}" for i in range(regexes)]
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
        out.append((f"catastrophic re: pattern in {fmt} (was killed at 30-60 s; refused since; RE2: linear)",
                    ["explain", path, "--device", "h100"], {}))
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
    out.append(("plugin hook sleeping 1 h: backends (bounded by the 1 s plugin budget, then cached)", ["backends"],
                {"PYTHONPATH": str(sleeper)}))
    return out


# --- Issue 23: patterns, files that are not files, configs that lie, runs, streams, plugins ---------

CLI = ["-m", "moe_registry.cli"]


def _case(label: str, argv: list[str], expect: int, env: dict[str, str] | None = None, *, cli: bool = True,
          stdout: str | None = None, stderr: str | None = None) -> dict:
    return {"case": label, "argv": (CLI if cli else []) + argv, "expect": expect, "env": env or {},
            "stdout": stdout, "stderr": stderr}


TINY_MOE = {"hidden_size": 64, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
            "num_hidden_layers": 2, "intermediate_size": 128}


def _install(root: Path, name: str, body: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    _plugin(root, name, body)  # dedents body: it must start at column 0
    for rel, text in (extra or {}).items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return {"PYTHONPATH": str(root)}


_HOOK = """\
from moe_registry.backends.reference import DECLARATION
from moe_registry.registry import hookimpl
"""


def _reference_plugin(root: Path, name: str, prelude: str = "", in_hook: str = "", changes: str = "{}",
                      extra: dict[str, str] | None = None) -> dict[str, str]:
    """A plugin declaring the reference backend under its own id, with ``changes``, running
    ``prelude`` at import and ``in_hook`` in its hook."""
    body = (_HOOK + textwrap.dedent(prelude) + "\n@hookimpl\ndef moe_registry_backends():\n"
            + textwrap.indent(textwrap.dedent(in_hook), "    ")
            + f"\n    return [DECLARATION.model_dump() | {{'id': '{name.replace('_', '-')}'}} | {changes}]\n")
    return _install(root / name, name, body, extra)


def issue23_cases(tmp: Path) -> list[dict]:
    out: list[dict] = []

    def config(name: str, data: object) -> str:
        path = tmp / name / "config.json"
        path.parent.mkdir(parents=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    dots = ".?" * 40 + "X"
    quants = {
        "compressed-tensors ignore": {"quant_method": "compressed-tensors", "ignore": ["re:" + dots], "config_groups": {
            "g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"},
                  "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor"}}}},
        "ModelOpt exclude_modules": {"quant_method": "modelopt", "quantization": {
            "quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["re:" + dots]}},
        "GPTQ dynamic": {"quant_method": "gptq", "bits": 4, "group_size": 128, "dynamic": {"-:" + dots: {}}},
        "FP8 ignored_layers": {"quant_method": "fp8", "ignored_layers": ["re:" + dots]},
        "MXFP4 modules_to_not_convert": {"quant_method": "mxfp4", "modules_to_not_convert": ["re:" + dots]},
    }
    for where, quant in quants.items():
        path = config(f"dots_{where.split()[0]}", qwen(num_hidden_layers=MAX_LAYERS, quantization_config=quant))
        out.append(_case(f"re:(.?)x40X in {where}, {MAX_LAYERS} layers (was > 120 s)",
                         ["explain", path, "--device", "h100"], 0))
    variants = {
        "nested optional classes": "re:" + "(?:[a-z]?[0-9]?)?" * 12 + "X",
        "alternation sequence": "re:" + "(?:m|mo|mod)" * 15 + "X",
        "digit loops with .*": "re:" + r"\d*.*" * 6 + "X",
        "lookahead": "re:(?=.*experts)(?=.*mlp).*X",
    }
    for what, pattern in variants.items():
        path = config("variant_" + what.replace(" ", "_").replace("*", "s").replace(".", "d"),
                      qwen(num_hidden_layers=MAX_LAYERS, quantization_config={
                          "quant_method": "fp8", "ignored_layers": [pattern]}))
        out.append(_case(f"re: {what}, {MAX_LAYERS} layers", ["explain", path, "--device", "h100"],
                         2 if what == "lookahead" else 0))
    one = config("dots30_one_layer", qwen(num_hidden_layers=1, quantization_config={
        "quant_method": "fp8", "ignored_layers": ["re:" + ".?" * 30 + "X"]}))
    out.append(_case("re:(.?)x30X on one layer (was 45 s)", ["explain", one, "--device", "h100"], 0))
    for n in (20_000, 100_000):
        path = config(f"glob_{n}", qwen(quantization_config={"quant_method": "modelopt", "quantization": {
            "quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["[" * n]}}))
        out.append(_case(f"glob of {n:,} '[' in ModelOpt exclude_modules (was {'20' if n == 20_000 else '> 30'} s)",
                         ["explain", path, "--device", "h100"], 2))
    out.append(_case("plan_config on a dict that contains itself (never returned; now planned)", ["-c", textwrap.dedent("""
        import sys
        from moe_registry.planner import PlanError, plan_config
        from moe_registry.models import load_preset
        cfg = {k: v for k, v in load_preset("qwen3-30b-a3b").items() if not k.startswith("_")}
        qc = {"quant_method": "fp8", "ignored_layers": []}
        qc["self"] = qc
        cfg["quantization_config"] = qc
        try:
            plan_config(cfg, device="h100")
        except PlanError as exc:
            print(type(exc).__name__, exc, file=sys.stderr)
            sys.exit(2)
        """)], 0, cli=False))
    # Controls: what any command costs on this machine at the time of the run (it is shared).
    out.append(_case("control: python -c pass", ["-c", "pass"], 0, cli=False))
    out.append(_case("control: backends --json, no plugin", ["backends", "--json"], 0))

    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    out.append(_case("FIFO as the config path (blocked forever)", ["explain", str(fifo), "--device", "h100"], 2))
    out.append(_case("FIFO as --costs (blocked forever)", [*SELECT[:1], "--experts", "8", *SELECT[1:], "--policy",
                                                          "measured", "--costs", str(fifo), "--json"], 2))
    outdir = tmp / "outdir"
    outdir.mkdir()
    out.append(_case("probe --out a directory (ran 60 s before failing)", ["probe", "--out", str(outdir), "--json"], 2))
    out.append(_case("probe --out /proc/version", ["probe", "--out", "/proc/version", "--json"], 2))

    v3 = {k: v for k, v in json.loads(preset_text("deepseek-v3")).items() if not k.startswith("_")}
    for shape, value in (("list", ["fp4"]), ("dict", {"fp4": 1})):
        out.append(_case(f"DeepSeek expert_dtype as a {shape} (was exit 1)",
                         ["explain", config(f"expert_dtype_{shape}", v3 | {"expert_dtype": value}), "--device", "b200",
                          "--json"], 2))
    out.append(_case('ModelOpt "quantization": [1] (was planned as bf16, exit 0)',
                     ["explain", config("modelopt_list", qwen(quantization_config={
                         "quant_method": "modelopt", "quantization": [1]})), "--device", "h100", "--json"], 2))
    out.append(_case("NaN e_score_correction_bias in DeepSeek-V3 routing (was accepted)", ["-c", textwrap.dedent("""
        import sys, torch
        from moe_registry.execution import route
        from moe_registry.planner import plan_model
        layer = plan_model("deepseek-v3", device="b200", select=False).layers[0].layer
        bias = torch.zeros(layer.num_experts); bias[3] = float("nan")
        try:
            route(torch.randn(4, layer.num_experts), layer, correction_bias=bias, n_group=8, topk_group=4)
        except ValueError as exc:
            print(exc, file=sys.stderr); sys.exit(2)
        """)], 2, cli=False))

    tiny = config("tiny", qwen(**TINY_MOE))
    run = ["run", "--preset", tiny, "--torch-device", "cpu"]
    out.append(_case("run --tokens 1000000000 (was exit 1)", [*run, "--tokens", "1000000000", "--json"], 2))
    out.append(_case("run --tokens 100000 on the CPU, qwen3 layer (was > 90 s)",
                     ["run", "--preset", "qwen3-30b-a3b", "--torch-device", "cpu", "--tokens", "100000", "--json"], 2))
    out.append(_case("run --repeats 1000000000 (was > 60 s)", [*run, "--repeats", "1000000000", "--json"], 2))
    out.append(_case("bench --tokens 10000000000 (was exit 3)", ["bench", TINY_LAYER, "--tokens", "10000000000",
                                                                "--torch-device", "cpu", "--json"], 2))
    out.append(_case("run --tp 65536 --torch-device cpu (spawned ranks first)", [*run, "--tp", "65536", "--json"], 2))
    adapter = _reference_plugin(tmp, "acme_exit_adapter", changes='{"adapter": "acme_exit_adapter:Experts"}',
                                prelude="""
        from moe_registry.execution.base import Experts as _Base

        class Experts(_Base):
            def __init__(self, *args, **kwargs):
                raise SystemExit(11)

            def forward(self, hidden_states, topk_weights, topk_ids):
                return hidden_states
        """)
    out.append(_case("adapter raising SystemExit in run (was exit 11, no message)",
                     [*run, "--tokens", "4", "--force", "acme-exit-adapter", "--json"], 2, adapter))
    out.append(_case("ids in a Tensor subclass faking torch.aminmax (passed the check)", ["-c", textwrap.dedent("""
        import sys, torch
        from moe_registry import LayerSpec, select_backend
        from moe_registry.execution import build_experts, random_weights
        class Liar(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if func is torch.aminmax:
                    return torch.return_types.aminmax((torch.tensor(0), torch.tensor(1)))
                return super().__torch_function__(func, types, args, kwargs or {})
        layer = LayerSpec(num_experts=8, top_k=2, hidden_size=64, intermediate_size=32, activation="silu")
        experts = build_experts(select_backend(layer, "cpu", force="torch-grouped-mm"), random_weights(layer))
        ids = torch.full((4, 2), 10**9, dtype=torch.int64).as_subclass(Liar)
        try:
            experts(torch.randn(4, 64, dtype=torch.bfloat16), torch.full((4, 2), 0.5), ids)
        except ValueError as exc:
            print(exc, file=sys.stderr); sys.exit(2)
        """)], 2, cli=False))

    out.append(_case("backends --json > /dev/full (was a traceback)", ["backends", "--json"], 2, stdout="/dev/full"))
    out.append(_case("bad input with stderr on /dev/full (was exit 1)", ["explain", "no-such-model"], 2,
                     stderr="/dev/full"))
    fake = tmp / "fakesmi"
    fake.mkdir()
    for name, memory in (("inf", "inf"), ("absurd", "1e308")):
        smi = fake / name / "nvidia-smi"
        smi.parent.mkdir()
        smi.write_text(f"#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 9.0, {memory}'\n")
        smi.chmod(0o755)
        out.append(_case(f"nvidia-smi reporting {memory} MiB of memory (was exit 1)",
                         [*SELECT[:1], "--experts", "8", *SELECT[1:-2], "--json"], 0,
                         {"PATH": f"{smi.parent}{os.pathsep}{os.environ.get('PATH', '')}"}))

    def plugin(label: str, env: dict[str, str], argv: list[str] | None = None) -> None:
        out.append(_case(f"plugin {label}: backends --json", argv or ["backends", "--json"], 0, env))

    plugin("raising KeyboardInterrupt during registration (every command exited 130)", _install(
        tmp / "kbd", "acme_kbd", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(1)\n"))
    pkg_faults = {"SystemExit": "raise SystemExit(5)", "KeyboardInterrupt": "raise KeyboardInterrupt",
                  "a hang": "import time\ntime.sleep(3600)", "RuntimeError": "raise RuntimeError('boom')"}
    for what, code in pkg_faults.items():
        slug = "acme_pkg_" + what.split()[-1].lower()
        env = _reference_plugin(tmp, slug, changes=(
            '{"requirements": [{"kind": "package", "name": "acmepkg", "import_name": "acmepkg_%s.sub", '
            '"source": "test"}]}' % slug), extra={f"acmepkg_{slug}/__init__.py": code, f"acmepkg_{slug}/sub.py": ""})
        out.append(_case(f"plugin package requirement 'pkg.sub' whose pkg does {what} on import: select --json",
                         [*SELECT[:1], "--experts", "8", *SELECT[1:-2], "--json"], 0, env))
    sleepers = _reference_plugin(tmp, "acme_sleepers", changes='{"requirements": [%s]}' % ", ".join(
        '{"kind": "jit_module", "name": "m%d", "probe": "acme_sleepers:sleepy", "source": "test"}' % i
        for i in range(40)), prelude="""
        def sleepy():
            import time
            time.sleep(3600)
        """)
    out.append(_case("plugin with 40 sleeping requirement probes: select --json (was ~200 s)",
                     [*SELECT[:1], "--experts", "8", *SELECT[1:-2], "--json"], 0, sleepers))
    huge = _reference_plugin(tmp, "acme_huge_multiple", changes=(
        '{"shape_rules": [{"dimension": "intermediate", "multiple_of": 10**400, "source": "test"}]}'))
    plugin("declaring multiple_of=10**400 (every select / explain exited 1)", huge)
    out.append(_case("plugin declaring multiple_of=10**400: explain --json",
                     ["explain", "qwen3-30b-a3b", "--device", "h100", "--json"], 0, huge))
    plugin("with a non-daemon thread (the CLI never exited)", _reference_plugin(tmp, "acme_thread", prelude="""
        import threading, time
        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
        """))
    plugin("whose thread prints (corrupted --json)", _reference_plugin(tmp, "acme_chatty", prelude="""
        import threading, time
        def chatter():
            for _ in range(200):
                print("chatter")
                time.sleep(0.005)
        threading.Thread(target=chatter, daemon=True).start()
        """))
    plugin("calling os._exit(7) in its hook", _reference_plugin(tmp, "acme_osexit", in_hook="import os\nos._exit(7)"))
    plugin("registering an atexit hook that prints and exits", _reference_plugin(tmp, "acme_atexit", prelude="""
        import atexit, os
        atexit.register(lambda: (print("bye from atexit"), os._exit(9)))
        """))
    plugin("installing a SIGTERM/SIGINT handler", _reference_plugin(tmp, "acme_signal", prelude="""
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        """))
    plugin("monkeypatching json.dumps and select_backend", _reference_plugin(tmp, "acme_patch", prelude="""
        import json, moe_registry.selection
        json.dumps = lambda *a, **k: "NaN"
        moe_registry.selection.select_backend = None
        """))
    plugin("replacing sys.stdout", _reference_plugin(tmp, "acme_stdout", prelude="""
        import io, sys
        sys.stdout = io.StringIO()
        """))
    return out


TINY_LAYER = "layer:experts=8,top_k=2,hidden=64,intermediate=32"


def _run_case(case: dict, repo: Path, timeout: float) -> dict:
    env = {**os.environ, **case["env"]}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [case["env"].get("PYTHONPATH"), str(repo)]))
    streams = {}
    for key in ("stdout", "stderr"):
        streams[key] = open(case[key], "w") if case[key] else subprocess.PIPE
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *case["argv"]], env=env, text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL, **streams)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the case and anything it spawned
        stdout, stderr = proc.communicate()
        code = "timeout"
    seconds = time.perf_counter() - t0
    for key in ("stdout", "stderr"):
        if case[key]:
            streams[key].close()
    err = (stderr or "").strip().splitlines()
    strict = None
    if "--json" in case["argv"] and stdout is not None and code != "timeout":
        try:
            json.loads(stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            strict = True
        except ValueError:
            strict = False
    return {"case": case["case"], "exit": code, "expected_exit": case["expect"], "seconds": round(seconds, 3),
            "strict_json": strict, "stdout_bytes": len(stdout or ""), "stderr_lines": len(err),
            "stderr": (err[0][:200] if err else "")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--repo", default=str(REPO), help="the source tree to run (e.g. an older commit's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a case is killed")
    parser.add_argument("--only", default="", help="run the cases whose label contains this text")
    parser.add_argument("--skip", action="append", default=[], help="skip the cases whose label contains this text")
    parser.add_argument("--issue23", action="store_true", help="only issue 23's cases")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # plugins evaluated cold, once each
        (Path(tmp) / "13").mkdir()
        all_cases = [] if args.issue23 else [
            _case(label, argv, -1, extra_env) for label, argv, extra_env in cases(Path(tmp) / "13")]
        (Path(tmp) / "23").mkdir()
        all_cases += issue23_cases(Path(tmp) / "23")
        for case in all_cases:
            if args.only not in case["case"] or any(text in case["case"] for text in args.skip):
                continue
            result = _run_case(case, Path(args.repo), args.timeout)
            if case["expect"] < 0:
                del result["expected_exit"]
            results.append(result)
            print(f"{result['seconds']:7.2f} s  exit {result['exit']}  {case['case']}"
                  + (f"\n           {result['stderr'][:120]}" if result["stderr"] else ""), flush=True)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_name(), "cpus": os.cpu_count(),
              "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # a shared machine: context for the seconds
              "python": sys.version.split()[0], "method": "one fresh `python -m moe_registry.cli` process per case "
              "(or `python -c` for a library case), wall time including interpreter start (about 0.25 s of it); "
              f"a case still running after {args.timeout:g} s is killed with its process group ('timeout')",
              "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
