#!/usr/bin/env python3
"""The measured policy on real layer shapes: two cost tables, crossovers, regret, and the policy
choosing each side of the marlin / torch-grouped-mm crossover (issue 5, parts 3-4).

    MOE_REGISTRY_VLLM_MOE_C=/path/to/vllm/_moe_C_stable_libtorch.abi3.so \\
        python benchmarks/measured_policy.py --out-dir docs/bench/measured-policy
    python benchmarks/measured_policy.py --out-dir /tmp/mp --torch-device cpu --quick      # logic check on CPU

Cases, in order (the last is optional and runs only if time is left):

    gemma4-bf16   gemma-4-26b-a4b                          E=128 top8 H=2816 I=704 gelu_tanh
    qwen3-bf16    qwen3-30b-a3b                            E=128 top8 H=2048 I=768 silu
    qwen3-int4    qwen3-30b-a3b  --quant int4_w4a16:g128   marlin vs torch-grouped-mm (dequantized at load)
    mixtral-int4  mixtral-8x7b   --quant int4_w4a16:g128   E=8 top2 H=4096 I=14336

For each case, every eligible and available backend on this machine (``reference`` included: it
is eligible everywhere, with priority 0; ``--no-reference`` leaves it out) is built once and timed with
``moe_registry.measure.bench.run_bench`` (CUDA events, warm-up, median of up to ``--reps`` calls, 8 rotated
input sets) at the policy token counts 1,16,64,512,4096 and, in a separate pass, at the held-out
truth counts 1,8,...,4096. Then:

* crossover: the token count where the faster of marlin and torch-grouped-mm changes, in the truth
  table and in the policy table (``moe_registry.measure.analysis.crossover``);
* the policy picking each side: ``select_backend(layer, None, policy=MeasuredPolicy(policy_table,
  num_tokens=T))`` for T below and at / above the policy table's crossover: ``decided_by ==
  "measured"`` and a different backend on each side;
* regret: for every case and truth token count, truth time of the policy's choice / best truth
  time (max, mean, held-out only), and the same for the declared-priority default (target <= 5 %).

Robustness: each case runs in a child process with a time limit (a CUDA fault or hang in one
kernel cannot take the others down); each child rewrites its case file after every backend, so a
killed case keeps what it measured; the analysis runs on whatever came back. The whole run keeps
to ``--budget-s`` (default 270 s). The compact table is printed last.

Outputs under ``--out-dir``: ``policy_costs.json`` and ``truth_costs.json`` (cost tables, usable
with ``moe-registry select --policy measured --costs``), ``measured_policy.json`` (everything
else), ``measured_policy.png`` (truth times vs tokens per backend, policy-table points as hollow
squares, crossovers marked), ``cases/*.json`` and ``logs/*.log``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from _host import write_json  # noqa: E402
from moe_registry.errors import one_line  # noqa: E402
from moe_registry.measured import CostEntry, CostTable  # noqa: E402
from moe_registry.schemas.layer import LayerSpec  # noqa: E402

POLICY_TOKENS = (1, 16, 64, 512, 4096)
TRUTH_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUICK_POLICY_TOKENS = (1, 8, 64)
QUICK_TRUTH_TOKENS = (1, 2, 4, 8, 16, 32, 64)
PAIR = ("marlin", "torch-grouped-mm")
ANALYSIS_RESERVE_S = 25.0  # kept for the analysis, the plot and the summary
MIN_CASE_S = 30.0  # a case is not started with less than this left


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    preset: str
    quant: str | None = None
    optional: bool = False


CASES = (
    Case("gemma4-bf16", "gemma-4-26b-a4b"),
    Case("qwen3-bf16", "qwen3-30b-a3b"),
    Case("qwen3-int4", "qwen3-30b-a3b", "int4_w4a16:g128"),
    Case("mixtral-int4", "mixtral-8x7b", "int4_w4a16:g128", optional=True),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--torch-device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few token counts (CPU logic check)")
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(c.name for c in CASES)}")
    p.add_argument("--policy-tokens", default=None, help="token counts of the policy table (default 1,16,64,512,4096)")
    p.add_argument("--truth-tokens", default=None,
                   help="held-out token counts of the truth table (default 1,8,16,...,4096)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--input-sets", type=int, default=8)
    p.add_argument("--max-point-s", type=float, default=1.0, help="timed seconds per point before reps are cut")
    p.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget for the whole run")
    p.add_argument("--case-timeout-s", type=float, default=110.0, help="limit for one case's child process")
    p.add_argument("--no-reference", action="store_true", help="do not time the reference backend")
    p.add_argument("--inprocess", action="store_true", help="run the cases in this process (no isolation)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _tokens(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from moe_registry.measure.bench import parse_tokens

    policy, truth = (QUICK_POLICY_TOKENS, QUICK_TRUTH_TOKENS) if args.quick else (POLICY_TOKENS, TRUTH_TOKENS)
    return (parse_tokens(args.policy_tokens) if args.policy_tokens else policy,
            parse_tokens(args.truth_tokens) if args.truth_tokens else truth)


def case_layer(case: Case, quick: bool) -> tuple[LayerSpec, int]:
    """The case's MoE layer shape (the first distinct one) and how many MoE layers share it."""
    from moe_registry.planner import plan_model

    plan = plan_model(case.preset, quant=case.quant, select=False)
    layer = plan.layers[0].layer.shape_key()
    count = sum(1 for lp in plan.layers if lp.layer.shape_key() == layer)
    if quick:  # same activation / quant / routing, CPU-sized
        layer = layer.replace(num_experts=16, top_k=min(layer.top_k, 4), hidden_size=256, intermediate_size=128)
    return layer, count


# --- One case (child process) -------------------------------------------------------------------------


def run_case(case: Case, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from moe_registry.measure.bench import run_bench

    policy_tokens, truth_tokens = _tokens(args)
    path = out_dir / "cases" / f"{case.name}.json"
    record: dict[str, Any] = {"case": case.name, "preset": case.preset, "quant": case.quant, "complete": False}
    started = time.perf_counter()
    try:
        layer, count = case_layer(case, args.quick)
        record.update(layer=layer.model_dump(mode="json"), layer_describe=layer.describe(), moe_layers=count)
        print(f"== {case.name}: {case.preset}{' --quant ' + case.quant if case.quant else ''}: {layer.describe()}",
              flush=True)

        def save(report: Any) -> None:
            record.update(policy=report.table.model_dump(mode="json"),
                          truth=report.holdout.model_dump(mode="json") if report.holdout is not None else None,
                          skipped=report.skipped, meta=report.meta, wall_s=round(time.perf_counter() - started, 1))
            write_json(path, record)

        exclude = ("reference",) if args.no_reference else ()
        report = run_bench([layer], policy_tokens, reps=args.reps, torch_device=args.torch_device,
                           holdout_tokens=truth_tokens,
                           exclude=exclude, input_sets=args.input_sets, max_point_s=args.max_point_s,
                           progress=lambda line: print(line, flush=True), checkpoint=save)
        save(report)
        record["complete"] = True
    except Exception as exc:
        record["error"] = one_line(exc, limit=800)
        record["traceback"] = traceback.format_exc(limit=10)
        print(f"ERROR {case.name}: {record['error']}", flush=True)
    record["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(path, record)
    return record


def _child_argv(args: argparse.Namespace, case: Case) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--child", case.name, "--out-dir", args.out_dir,
            "--reps", str(args.reps), "--input-sets", str(args.input_sets), "--max-point-s", str(args.max_point_s)]
    if args.torch_device:
        argv += ["--torch-device", args.torch_device]
    for flag, value in (("--policy-tokens", args.policy_tokens), ("--truth-tokens", args.truth_tokens)):
        if value:
            argv += [flag, value]
    if args.quick:
        argv.append("--quick")
    if args.no_reference:
        argv.append("--no-reference")
    return argv


def run_child(case: Case, args: argparse.Namespace, out_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one case in a child process; its output goes to logs/<case>.log and to our stdout."""
    log_path = out_dir / "logs" / f"{case.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    status: dict[str, Any] = {"case": case.name, "timeout_s": round(timeout, 1)}
    started = time.perf_counter()
    try:
        proc = subprocess.run(_child_argv(args, case), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=_ROOT)
        output, status["rc"] = proc.stdout or b"", proc.returncode
    except subprocess.TimeoutExpired as exc:
        output, status["rc"] = exc.output or b"", None
        status["error"] = f"timed out after {timeout:.0f} s (what it measured before is kept)"
    text = output.decode(errors="replace")
    log_path.write_text(text)
    sys.stdout.write(text)
    sys.stdout.flush()
    if status.get("rc") not in (0, None):
        tail = " | ".join(text.strip().splitlines()[-3:])
        status["error"] = f"child exited with {status['rc']}: {tail[-400:]}"
    status["wall_s"] = round(time.perf_counter() - started, 1)
    return status


# --- Analysis (parent) ----------------------------------------------------------------------------------


def _merge(records: list[dict[str, Any]], key: str) -> CostTable | None:
    tables = [CostTable.model_validate(r[key]) for r in records if r.get(key)]
    if not tables:
        return None
    entries: list[CostEntry] = [e for t in tables for e in t.entries]
    first = tables[0]
    return first.model_copy(update={"entries": tuple(entries)})


def _prepare_selection_env(notes: list[str]) -> None:
    """Load what the children loaded (vLLM's _moe_C) so select_backend(layer, None) sees marlin."""
    try:
        import torch

        if torch.cuda.is_available():
            from moe_registry.measure.bench import load_optional_ops
            from moe_registry.registry import default_registry

            load_optional_ops(notes)
            default_registry().refresh_environment()
    except Exception as exc:
        notes.append(f"selection environment: {type(exc).__name__}: {exc}")


def analyse(records: list[dict[str, Any]], args: argparse.Namespace, out_dir: Path,
            result: dict[str, Any]) -> None:
    from moe_registry.measure import analysis, report

    policy, truth = _merge(records, "policy"), _merge(records, "truth")
    result["tables"] = {}
    if policy is not None:
        policy.save(out_dir / "policy_costs.json")
        result["tables"]["policy"] = str(out_dir / "policy_costs.json")
    if truth is not None:
        truth.save(out_dir / "truth_costs.json")
        result["tables"]["truth"] = str(out_dir / "truth_costs.json")
    if policy is None or truth is None:
        result["errors"].append("no cost table came back: nothing to analyse")
        return
    result["card"], result["device"] = truth.card, truth.device.model_dump(mode="json")
    result["versions"], result["date"] = truth.versions, truth.date

    # Crossovers, per case: every pair of backends the truth table has, and the policy table's.
    labels: dict[LayerSpec, str] = {}
    marks: dict[LayerSpec, list[tuple[int, str]]] = {}
    for r in records:
        if not r.get("layer"):
            continue
        layer = LayerSpec.model_validate(r["layer"])
        labels[layer] = r["case"]
        names = analysis.backends_of(truth, layer)
        cross = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                cross.append({"a": a, "b": b, "truth": analysis.crossovers(truth, layer, a, b),
                              "policy_table": analysis.crossovers(policy, layer, a, b)})
        r["crossovers"] = cross
        r["truth_winners"] = analysis.winners(truth, layer)
        r["policy_winners"] = analysis.winners(policy, layer)

    # The measured policy choosing each side: the marlin pair where present, else the policy
    # table's first winner change.
    notes: list[str] = result.setdefault("notes", [])
    _prepare_selection_env(notes)
    for r in records:
        if not r.get("layer"):
            continue
        layer = LayerSpec.model_validate(r["layer"])
        have = set(analysis.backends_of(policy, layer))
        pairs = [PAIR] if set(PAIR) <= have else []
        pairs += [(a, b) for a, b, _ in analysis.winner_changes(policy, layer) if {a, b} != set(PAIR)][:1]
        r["policy_sides"] = []
        for a, b in pairs:
            try:
                try:
                    sides = analysis.policy_sides(policy, layer, a, b, None, truth=truth)
                    sides["selected_for"] = "this machine (select_backend(layer, None))"
                except Exception as exc:  # e.g. the op is not registered in this process
                    sides = analysis.policy_sides(policy, layer, a, b, policy.device, truth=truth)
                    sides["selected_for"] = (f"planned {policy.device.label()} (this machine failed: "
                                             f"{one_line(exc, limit=200)})")
                r["policy_sides"].append(sides)
                if sides.get("crossover") is not None:
                    marks.setdefault(layer, []).append((sides["crossover"], f"policy table: {a}/{b} T={sides['crossover']}"))
            except Exception as exc:
                result["errors"].append(f"{r['case']}: policy sides {a}/{b}: {type(exc).__name__}: {exc}")

    try:
        reg = analysis.regret(policy, truth)
        result["regret"] = reg
    except Exception as exc:
        result["errors"].append(f"regret: {type(exc).__name__}: {exc}")
    try:
        report.plot(truth, out_dir / "measured_policy.png", labels=labels, overlay=policy, marks=marks,
                   title=f"measured policy: {truth.card} \u2014 {truth.date} (lines: held-out truth; "
                         "squares: policy table)")
        result["plot"] = str(out_dir / "measured_policy.png")
    except Exception as exc:
        result["errors"].append(f"plot: {type(exc).__name__}: {exc}")


def _fmt(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def summary_lines(records: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
    lines = [f"== measured policy: {result.get('card', '?')}; "
             + ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items() if k in ("torch", "vllm_moe_c", "flashinfer"))
             + f"; wall {result.get('wall_s', '?')} s"]
    truth_path = result.get("tables", {}).get("truth")
    truth = CostTable.load(truth_path) if truth_path else None
    if truth is not None:
        from moe_registry.measure import analysis

        tokens = sorted({e.tokens for e in truth.entries})
        lines.append("truth table, median us per forward (* fastest):")
        lines.append(f"{'case':<13} {'backend':<17}" + "".join(f"{t:>8}" for t in tokens))
        for r in records:
            if not r.get("layer"):
                continue
            layer = LayerSpec.model_validate(r["layer"])
            best = analysis.winners(truth, layer)
            for i, b in enumerate(analysis.backends_of(truth, layer)):
                pts = dict(truth.points(b, layer))
                cells = "".join(f"{_fmt(pts.get(t)) + ('*' if best.get(t) == b else ''):>8}" for t in tokens)
                lines.append(f"{r['case'] if i == 0 else '':<13} {b:<17}" + cells)
    for r in records:
        for c in r.get("crossovers", []):
            if c["truth"] or c["policy_table"] or set((c["a"], c["b"])) == set(PAIR):
                lines.append(f"crossover {r['case']}: {c['a']} vs {c['b']}: truth T={c['truth'] or 'none'}, "
                             f"policy table T={c['policy_table'] or 'none'}")
        for s in r.get("policy_sides", []):
            picks = ", ".join(f"T={row['tokens']} {row['backend']} ({row['decided_by']})"
                              + (f" [truth: {row['truth_fastest']}]" if row.get("truth_fastest") else "")
                              for row in s["rows"])
            verdict = "YES" if s["sides_differ"] else "NO"
            lines.append(f"policy picks {r['case']} ({s['a']}/{s['b']}, crossover T={s['crossover']}): {picks}; "
                         f"each side measured and different: {verdict} [{s.get('selected_for', '')}]")
    reg = result.get("regret")
    if reg:
        s = reg["summary"]

        def pct(x: float | None) -> str:
            return "-" if x is None else f"{(x - 1) * 100:.1f}%"

        lines.append(f"regret, measured policy: max {pct(s['max'])}, mean {pct(s['mean'])} over {s['n']} (case, T); "
                     f"held-out max {pct(s['held_out_max'])} ({s['held_out_n']}) | declared priority: max "
                     f"{pct(s['declared_max'])}, mean {pct(s['declared_mean'])} | target <= 5%: "
                     f"{'MET' if s['meets_target'] else 'NOT MET'}")
        per_case = []
        for r in records:
            if r.get("layer_describe") in reg["per_layer"]:
                p = reg["per_layer"][r["layer_describe"]]
                n_backends = len({b for row in reg["rows"] if row["layer"] == r["layer_describe"] for b in row["candidates"]})
                per_case.append(f"{r['case']} max {pct(p['max'])} mean {pct(p['mean'])} "
                                f"(declared max {pct(p['declared_max'])}; {n_backends} backends)")
        if per_case:
            lines.append("  per case: " + "; ".join(per_case))
        worst = sorted(reg["rows"], key=lambda row: -row["regret"])[:3]
        for row in worst:
            if row["regret"] > 1.0:
                lines.append(f"  worst: {row['layer'][:48]} T={row['tokens']}: chose {row['chosen']} "
                             f"{row['chosen_us']:.1f} us, best {row['best']} {row['best_us']:.1f} us "
                             f"({pct(row['regret'])}){' held-out' if row['held_out'] else ''}")
    for r in records:
        for s in r.get("skipped", []) or []:
            lines.append(f"not timed {r['case']}: {s['backend']} ({s['stage']}"
                         f"{' T=' + str(s['tokens']) if s.get('tokens') else ''}): {s['reason'][:160]}")
        if r.get("error"):
            lines.append(f"ERROR {r['case']}: {r['error'][:300]}")
        for note in (r.get("meta") or {}).get("notes", []):
            lines.append(f"note {r['case']}: {note}")
    for e in result.get("errors", []):
        lines.append(f"ERROR {e[:300]}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"wrote {result.get('out_dir')}: measured_policy.json, policy_costs.json, truth_costs.json, "
                 "measured_policy.png")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {c.name: c for c in CASES}
    if args.child:
        run_case(by_name[args.child], args, out_dir)
        return 0

    started = time.perf_counter()
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases else [c.name for c in CASES]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    policy_tokens, truth_tokens = _tokens(args)
    result: dict[str, Any] = {"args": vars(args), "out_dir": str(out_dir), "policy_tokens": list(policy_tokens),
                              "truth_tokens": list(truth_tokens), "cases": [], "errors": [], "notes": []}
    json_path = out_dir / "measured_policy.json"
    records: list[dict[str, Any]] = []
    for name in wanted:
        case = by_name[name]
        left = args.budget_s - (time.perf_counter() - started) - ANALYSIS_RESERVE_S
        if left < MIN_CASE_S or (case.optional and left < 2 * MIN_CASE_S):
            result["notes"].append(f"{name} skipped: {max(left, 0):.0f} s left of the budget")
            continue
        case_path = out_dir / "cases" / f"{name}.json"
        if case_path.exists():
            case_path.unlink()  # never analyse a previous run's numbers
        if args.inprocess:
            status = {"case": name, "inprocess": True}
            try:
                run_case(case, args, out_dir)
            except Exception as exc:  # run_case catches its own; this is a last resort
                status["error"] = f"{type(exc).__name__}: {exc}"
        else:
            status = run_child(case, args, out_dir, min(args.case_timeout_s, left))
        try:
            record = json.loads(case_path.read_text()) if case_path.exists() else {"case": name}
        except (OSError, ValueError) as exc:
            record = {"case": name, "error": f"unreadable case file: {exc}"}
        record["status"] = status
        if status.get("error") and not record.get("error"):
            record["error"] = status["error"]
        records.append(record)
        result["cases"] = records
        result["wall_s"] = round(time.perf_counter() - started, 1)
        write_json(json_path, result)

    try:
        analyse(records, args, out_dir, result)
    except Exception as exc:
        result["errors"].append(f"analysis: {type(exc).__name__}: {exc}")
        result["analysis_traceback"] = traceback.format_exc(limit=10)
    result["cases"] = records
    result["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(json_path, result)
    try:
        lines = summary_lines(records, result)
    except Exception as exc:
        lines = [f"ERROR summary: {type(exc).__name__}: {exc}"]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
