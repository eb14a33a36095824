"""The cached plugin path (issue 23): `moe-registry backends` with three installed plugins against
the same command without them, interleaved in one run. Each plugin is evaluated once, out of
process, then read from the cache (its validated declarations as JSON): target <= 1.2x.

Also recorded: the first, uncached run (the plugins evaluated in child processes, in parallel).

Run: `python benchmarks/bench_plugins.py --out benchmarks/results/plugins-cpu.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _host import cpu_name  # benchmarks/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["backends", "--json"]

PLUGIN = '''
from moe_registry.backends.reference import DECLARATION
from moe_registry.registry import hookimpl


@hookimpl
def moe_registry_backends():
    base = DECLARATION.model_dump()
    return [base | {{"id": "{name}-{{}}".format(i), "name": "{name} backend {{}}".format(i)}} for i in range(2)]
'''


def install(root: Path, name: str) -> None:
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[moe_registry]\n{name} = {name}\n")
    (root / f"{name}.py").write_text(PLUGIN.format(name=name.replace("_", "-")))


def run(env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "moe_registry.cli", *COMMAND], env=env, capture_output=True,
                          text=True, check=True)
    return time.perf_counter() - t0, json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plugins = Path(tmp) / "plugins"
        for name in ("acme_one", "acme_two", "acme_three"):
            install(plugins, name)
        base = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        without = {**base, "PYTHONPATH": str(REPO)}
        with_plugins = {**base, "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO)])}
        run(without)  # warm the OS file cache
        cold, data = run(with_plugins)  # evaluated out of process, then cached
        assert len([b for b in data["backends"] if b["id"].startswith("acme-")]) == 6, data["problems"]
        assert not data["problems"], data["problems"]
        times: dict[str, list[float]] = {"without": [], "with": []}
        for i in range(args.runs):  # interleaved, alternating which goes first
            for label in (("without", "with") if i % 2 == 0 else ("with", "without")):
                times[label].append(run(without if label == "without" else with_plugins)[0])
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["with"] / medians["without"]
    record = {
        "date": datetime.date.today().isoformat(), "machine": cpu_name(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "command": "moe-registry " + " ".join(COMMAND), "runs": args.runs,
        "plugins": 3, "declarations_per_plugin": 2,
        "median_s_without_plugins": round(medians["without"], 3), "median_s_with_plugins_cached": round(medians["with"], 3),
        "ratio": round(ratio, 3), "target_ratio": 1.2, "meets_target": ratio <= 1.2,
        "first_run_s_uncached": round(cold, 3),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: context for the seconds
        "method": "fresh processes, interleaved; the plugin cache in a temporary $XDG_CACHE_HOME, filled by the "
                  "first run (recorded as first_run_s_uncached)",
    }
    print(json.dumps(record, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
