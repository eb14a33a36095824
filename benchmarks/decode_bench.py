#!/usr/bin/env python3
"""4-bit decode at the memory roofline (issue 21): the four shapes, every eligible backend here, graphed
decode beside eager, the HBM floor in the same table.

    MOE_REGISTRY_VLLM_MOE_C=/path/to/_moe_C.so python benchmarks/decode_bench.py --out-dir docs/bench/decode
    python benchmarks/decode_bench.py --out-dir /tmp/d --torch-device cpu --quick     # logic check on the CPU

Cases (each in a child process with a time limit, so a kernel fault cannot take the others down):

    gemma4-nvfp4   gemma-4-26b-a4b-nvfp4                     E=128 top8 H=2816 I=704 gelu_tanh, NvFP4 (W4A16 here)
    qwen3-int4     qwen3-30b-a3b-gptq-int4                   E=128 top8 H=2048 I=768 silu, int4 g128, fp16
    mixtral-awq    mixtral-8x7b --quant int4_w4a16:g128:zp   E=8 top2 H=4096 I=14336 silu, AWQ int4 g128
    gpt-oss-mxfp4  gpt-oss-120b                              E=128 top4 H=I=2880 swigluoai + biases, MXFP4

Each case is ``moe_registry.measure.bench.run_bench`` (what ``moe-registry bench`` runs) at T in
{1, 2, 4, 8, 16, 32, 64, 512, 4096}: every eligible backend that is installed here (the reference left
out; a backend that is not is listed as not timed, with its reason), eager at every T and from CUDA graphs
at T <= 64 where the backend can be captured. Any backend that registers (e.g. a new low-T kernel) is
picked up without editing this file.

The floor: the bytes of expert weights a forward must read at least once (the checkpoint's format:
values and scales, biases), for the experts T tokens activate, over the card's HBM bandwidth
(datasheet, ``DeviceSpec.memory_bandwidth_gbs``). Active experts: ``E * (1 - (1 - k/E)^T)``, the
expectation under the bench's routing (top-k of i.i.d. logits: uniform). Activations and outputs
are ignored (a few KB at decode), so the floor is a lower bound.

Outputs under ``--out-dir``: ``decode_bench.json`` (cost tables with ``mode``, floors, what was not timed,
card, date, versions), ``decode_bench.png`` (per case: eager solid, graph dashed, floor dotted), and
``cases/*.json``, ``logs/*.log``; the compact table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from _host import write_json  # noqa: E402
from moe_registry.errors import one_line  # noqa: E402
from moe_registry.measured import DECODE_BUCKETS, CostTable  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

TOKENS = (1, 2, 4, 8, 16, 32, 64, 512, 4096)
QUICK_TOKENS = (1, 4, 64, 128)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    preset: str
    quant: str | None = None


CASES = (
    Case("gemma4-nvfp4", "gemma-4-26b-a4b-nvfp4"),
    Case("qwen3-int4", "qwen3-30b-a3b-gptq-int4"),
    Case("mixtral-awq", "mixtral-8x7b", "int4_w4a16:g128:zp"),
    Case("gpt-oss-mxfp4", "gpt-oss-120b"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--torch-device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few token counts (CPU logic check)")
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(c.name for c in CASES)}")
    p.add_argument("--tokens", default=None, help="token counts (default 1,2,4,8,16,32,64,512,4096)")
    p.add_argument("--backend", action="append", default=[], help="only these backends (repeatable)")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--input-sets", type=int, default=4)
    p.add_argument("--max-point-s", type=float, default=0.25)
    p.add_argument("--case-timeout-s", type=float, default=150.0)
    p.add_argument("--budget-s", type=float, default=230.0, help="wall-clock budget for every case together")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def case_layer(case: Case, quick: bool) -> LayerSpec:
    from moe_registry.planner import plan_model

    layer = plan_model(case.preset, quant=case.quant, select=False).layers[0].layer.shape_key()
    if quick:
        layer = layer.replace(num_experts=16, top_k=min(layer.top_k, 4), hidden_size=256, intermediate_size=128)
    return layer


def floor_us(layer: LayerSpec, tokens: int, bandwidth_gbs: float) -> float:
    """Lower bound of one forward in microseconds: the active experts' weights, read once at HBM speed."""
    E, k = layer.local_num_experts, layer.top_k
    active = E * (1 - (1 - k / E) ** tokens)
    return layer.expert_weight_bytes() / E * active / (bandwidth_gbs * 1e9) * 1e6


# --- One case (child process) ------------------------------------------------------------------------


def run_case(case: Case, args: argparse.Namespace, out_dir: Path) -> None:
    from moe_registry.measure.bench import parse_tokens, run_bench

    path = out_dir / "cases" / f"{case.name}.json"
    record: dict[str, Any] = {"case": case.name, "preset": case.preset, "quant": case.quant, "complete": False}
    started = time.perf_counter()
    try:
        layer = case_layer(case, args.quick)
        record.update(layer=layer.model_dump(mode="json"), layer_describe=layer.describe())
        print(f"== {case.name}: {layer.describe()}", flush=True)

        def save(report: Any) -> None:
            record.update(table=report.table.model_dump(mode="json"), skipped=report.skipped, meta=report.meta,
                          wall_s=round(time.perf_counter() - started, 1))
            write_json(path, record)

        tokens = parse_tokens(args.tokens) if args.tokens else (QUICK_TOKENS if args.quick else TOKENS)
        report = run_bench([layer], tokens, backends=args.backend or None, reps=args.reps,
                           torch_device=args.torch_device, exclude=("reference",), input_sets=args.input_sets,
                           max_point_s=args.max_point_s, progress=lambda line: print(line, flush=True),
                           checkpoint=save)
        save(report)
        record["complete"] = True
    except Exception as exc:
        record["error"] = one_line(exc, limit=800)
        print(f"ERROR {case.name}: {record['error']}", flush=True)
    record["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(path, record)


def _child_argv(args: argparse.Namespace, case: Case) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--child", case.name, "--out-dir", args.out_dir,
            "--reps", str(args.reps), "--input-sets", str(args.input_sets), "--max-point-s", str(args.max_point_s)]
    for flag, value in (("--torch-device", args.torch_device), ("--tokens", args.tokens)):
        if value:
            argv += [flag, value]
    for b in args.backend:
        argv += ["--backend", b]
    return argv + (["--quick"] if args.quick else [])


# --- Parent: run, merge, floor, plot, summary ----------------------------------------------------------


def _bandwidth(table: CostTable) -> tuple[float | None, str]:
    from moe_registry.schemas.device import PRESETS

    if table.device.memory_bandwidth_gbs:
        return table.device.memory_bandwidth_gbs, f"{table.device.label()} datasheet"
    preset = next((d for d in PRESETS.values() if d.sm == table.device.sm and d.memory_bandwidth_gbs
                   and d.name in (table.card or "").lower()), None)
    return (preset.memory_bandwidth_gbs, f"{preset.name} datasheet") if preset else (None, "unknown")


def summary_lines(records: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
    from moe_registry.measure.analysis import backends_of

    lines = [f"== decode bench: {result.get('card', '?')}, {result.get('date', '?')}; "
             f"bandwidth {result.get('bandwidth_gbs')} GB/s ({result.get('bandwidth_source')}); "
             f"wall {result.get('wall_s')} s"]
    for r in records:
        if not r.get("table"):
            lines.append(f"{r['case']}: no table ({r.get('error', 'not run')})")
            continue
        table = CostTable.model_validate(r["table"])
        layer = LayerSpec.model_validate(r["layer"])
        tokens = sorted({e.tokens for e in table.entries})
        lines.append(f"-- {r['case']}: {r['layer_describe']}  (median us; graph rows at T <= {DECODE_BUCKETS[-1]})")
        lines.append(f"{'backend':<28}" + "".join(f"{t:>9}" for t in tokens))
        for b in backends_of(table, layer):
            for mode in ("graph", "eager"):
                pts = dict(table.points(b, layer, mode))
                if pts:
                    lines.append(f"{b + (' graph' if mode == 'graph' else ' eager'):<28}"
                                 + "".join(f"{pts[t]:>9.1f}" if t in pts else f"{'-':>9}" for t in tokens))
        floors = r.get("floor_us", {})
        if floors:
            lines.append(f"{'HBM floor':<28}" + "".join(f"{floors.get(str(t), 0):>9.1f}" for t in tokens))
        for s in r.get("skipped", []) or []:
            lines.append(f"  not timed: {s['backend']} ({s['stage']}{' T=' + str(s['tokens']) if s.get('tokens') else ''})"
                         f": {s['reason'][:150]}")
        if r.get("error"):
            lines.append(f"  ERROR: {r['error'][:300]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: c for c in CASES}
    if args.child:
        run_case(by_name[args.child], args, out_dir)
        return 0
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases else list(by_name)
    if any(w not in by_name for w in wanted):
        print(f"unknown case in {wanted}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    for name in wanted:
        left = args.budget_s - (time.perf_counter() - started)
        path = out_dir / "cases" / f"{name}.json"
        if path.exists():
            path.unlink()  # never report a previous run's numbers
        if left < 20:
            records.append({"case": name, "error": f"skipped: {max(left, 0):.0f} s left of the budget"})
            continue
        log = out_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(_child_argv(args, by_name[name]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=min(args.case_timeout_s, left), cwd=_ROOT)
            text, status = proc.stdout.decode(errors="replace"), f"rc={proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            text, status = (exc.output or b"").decode(errors="replace"), f"timed out after {exc.timeout:.0f} s"
        log.write_text(text)
        sys.stdout.write(text[-3000:])
        record = json.loads(path.read_text()) if path.exists() else {"case": name}
        record["status"] = status
        if "timed out" in status and not record.get("error"):
            record["error"] = status + " (what it measured before is kept)"
        records.append(record)

    result: dict[str, Any] = {"args": vars(args), "tokens": list(TOKENS), "cases": records}
    tables = [CostTable.model_validate(r["table"]) for r in records if r.get("table")]
    if tables:
        first = tables[0]
        result.update(card=first.card, date=first.date, versions=first.versions, device=first.device.label())
        bandwidth, source = _bandwidth(first)
        result.update(bandwidth_gbs=bandwidth, bandwidth_source=source)
        for r in records:
            if r.get("table") and bandwidth:
                layer = LayerSpec.model_validate(r["layer"])
                ts = sorted({e["tokens"] for e in r["table"]["entries"]})
                r["floor_us"] = {str(t): round(floor_us(layer, t, bandwidth), 2) for t in ts}
        try:
            from moe_registry.measure.report import plot

            merged = first.model_copy(update={"entries": tuple(e for t in tables for e in t.entries)})
            labels = {LayerSpec.model_validate(r["layer"]).shape_key(): r["case"] for r in records if r.get("layer")}
            plot(merged, out_dir / "decode_bench.png", labels=labels,
                 floors={LayerSpec.model_validate(r["layer"]).shape_key(): {int(t): v for t, v in r["floor_us"].items()}
                         for r in records if r.get("floor_us")},
                 title=f"decode: {first.card} \u2014 {first.date} (solid eager, dashed CUDA graph, dotted HBM floor)")
            result["plot"] = str(out_dir / "decode_bench.png")
        except Exception as exc:
            result["plot_error"] = one_line(exc, limit=300)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "decode_bench.json", result)
    print("\n".join(summary_lines(records, result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
