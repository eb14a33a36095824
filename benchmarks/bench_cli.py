"""Wall time of `moe-registry explain qwen3-235b-a22b --device b200 --json` as a fresh process,
and proof that it never imports torch. Target (issue 3): < 0.3 s on the development CPU.

Run: `python benchmarks/bench_cli.py --out benchmarks/results/cli-cpu.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _host import cpu_name  # benchmarks/ is sys.path[0] when run as a script

COMMAND = ["explain", "qwen3-235b-a22b", "--device", "b200", "--json"]
# The same command in-process, reporting whether torch got imported along the way.
TORCH_PROBE = ("import sys, io, contextlib\nfrom moe_registry.cli import main\n"
               "with contextlib.redirect_stdout(io.StringIO()): rc = main({argv!r})\n"
               "print(rc, 'torch' in sys.modules)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out")
    args = parser.parse_args()

    exe = shutil.which("moe-registry")
    cmd = [exe, *COMMAND] if exe else [sys.executable, "-m", "moe_registry.cli", *COMMAND]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)  # warm the OS file cache
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    baseline = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", TORCH_PROBE.format(argv=COMMAND)], capture_output=True, text=True,
                           check=True).stdout.split()
    torch_imported = probe[1] == "True"

    results = {
        "date": datetime.date.today().isoformat(), "command": "moe-registry " + " ".join(COMMAND),
        "machine": cpu_name(), "runs": args.runs,
        "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
        "max_s": round(max(times), 3), "python_startup_median_s": round(statistics.median(baseline), 3),
        "torch_imported": torch_imported, "target_s": 0.3,
    }
    results["meets_target"] = results["median_s"] < 0.3 and not torch_imported
    print(f"{results['command']}: median {results['median_s']} s (min {results['min_s']}, max {results['max_s']}) "
          f"over {args.runs} fresh processes; bare python {results['python_startup_median_s']} s; "
          f"torch imported: {torch_imported}; target < 0.3 s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
