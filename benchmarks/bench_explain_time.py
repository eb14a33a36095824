"""Wall time of `moe-registry explain PRESET --device h100` (text output, a fresh process) for every
bundled preset, measured in the same run as `python -c pass`, rounds interleaved so both see the
same machine load. Target (issue 20): median under 0.25 s for every preset.

Bytecode is written once before timing (a pip install compiles it), so no run pays for compiling.
``--compare DIR`` times a second source tree (another checkout's root) in the same rounds, so a
before / after comparison shares the machine state too.

``--instructions`` also counts the instructions of one run per preset and tree (and of
`python -c pass`) under valgrind (cachegrind, no cache simulation; PYTHONHASHSEED=0): the count
does not move with the machine's load or with the speed of a shared host, so it shows what a
change saves where the wall times of a small VM vary by more than that.

Run: `python benchmarks/bench_explain_time.py --out benchmarks/results/explain-time-cpu.json`.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _host import cpu_name  # benchmarks/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.25


def _presets(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "moe_registry" / "models").glob("*.json"))


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "COLUMNS")}
    env["PYTHONPATH"] = str(root)
    env["COLUMNS"] = "80"
    return env


def _explain(preset: str) -> list[str]:
    return [sys.executable, "-m", "moe_registry.cli", "explain", preset, "--device", "h100"]


def _time(cmd: list[str], root: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one fresh process run in ``root``: on a shared
    machine the CPU time is the steadier of the two (it does not count the time the process waited
    for a core). The process starts in ``root`` because `python -m` puts the working directory ahead
    of PYTHONPATH: started elsewhere inside a checkout, a --compare tree would time that checkout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(root), cwd=root, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _instructions(cmd: list[str], root: Path) -> float:
    """Millions of instructions one run of ``cmd`` executes (valgrind's cachegrind ``I refs``)."""
    env = _env(root) | {"PYTHONHASHSEED": "0"}  # set iteration orders: the same count every run
    done = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                           *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=root,
                          check=False)  # explain exits 3 where a layer has no backend: still counted
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {done.stderr[-500:]}")
    return round(int(found.group(1).replace(",", "")) / 1e6, 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare", help="a second source tree to time in the same rounds (e.g. the base commit)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count each run's instructions under valgrind (deterministic; ~10 s a run)")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind on PATH")

    trees = {"this": ROOT} | ({"compare": Path(args.compare).resolve()} if args.compare else {})
    for root in trees.values():
        compileall.compile_dir(str(root / "moe_registry"), quiet=1)
    presets = _presets(ROOT)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {name: {p: [] for p in presets} for name in trees}
    bare: list[tuple[float, float]] = []
    for _ in range(args.rounds):
        bare.append(_time([sys.executable, "-c", "pass"], ROOT))
        for preset in presets:
            for name, root in trees.items():
                times[name][preset].append(_time(_explain(preset), root))
        bare.append(_time([sys.executable, "-c", "pass"], ROOT))

    base_wall = statistics.median(w for w, _ in bare)
    base_cpu = statistics.median(c for _, c in bare)
    results = {
        "date": datetime.date.today().isoformat(), "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(), "command": "moe-registry explain PRESET --device h100 (text, COLUMNS=80)",
        "rounds": args.rounds, "target_s": TARGET_S, "python_c_pass_median_s": round(base_wall, 4),
        "python_c_pass_median_cpu_s": round(base_cpu, 4), "trees": {name: str(root) for name, root in trees.items()},
    }
    for name in trees:
        wall = {p: round(statistics.median(w for w, _ in v), 4) for p, v in times[name].items()}
        cpu = {p: round(statistics.median(c for _, c in v), 4) for p, v in times[name].items()}
        results[name] = {"median_s": wall, "median_cpu_s": cpu, "worst_median_s": max(wall.values()),
                         "worst_median_cpu_s": max(cpu.values()),
                         "worst_over_python_c_pass": round(max(wall.values()) / base_wall, 2)}
        print(f"{name}: worst median {max(wall.values()):.3f} s wall, {max(cpu.values()):.3f} s CPU "
              f"(python -c pass: {base_wall:.3f} s wall, {base_cpu:.3f} s CPU)")
        for p in presets:
            print(f"  {p:<28} {wall[p]:.3f} s  cpu {cpu[p]:.3f} s")
    if args.instructions:
        results["python_c_pass_instructions_M"] = _instructions([sys.executable, "-c", "pass"], ROOT)
        for name, root in trees.items():
            counts = {p: _instructions(_explain(p), root) for p in presets}
            results[name]["instructions_M"] = counts
            print(f"{name}: instructions (millions) " + ", ".join(f"{p} {n:.1f}" for p, n in counts.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
