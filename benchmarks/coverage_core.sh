#!/usr/bin/env bash
# Branch coverage of the decision core (issue 15) over the same fast tests mutation.sh runs.
# Usage: benchmarks/coverage_core.sh [OUT_FILE]   (default benchmarks/results/mutation/coverage.txt)
# Needs: pip install coverage. Writes the data file to a temporary directory, never the checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/benchmarks/results/mutation/coverage.txt}"
DATA="$(mktemp -d)"
trap 'rm -rf "$DATA"' EXIT
cd "$ROOT"
TESTS=$(sed -n '/^TESTS="/,/"$/p' benchmarks/mutation.sh | tr -d '"' | sed 's/^TESTS=//')
EXISTING=$(for t in $TESTS; do [ -f "$t" ] && echo "$t"; done)
CORE="moe_registry/selection/*.py,moe_registry/schemas/capability.py,moe_registry/planner/*.py"
export COVERAGE_FILE="$DATA/.coverage" OMP_NUM_THREADS=1
python3 -m coverage run --branch --include="$CORE" -m pytest -q -p no:cacheprovider $EXISTING > "$DATA/pytest.log" 2>&1 \
  || { tail -20 "$DATA/pytest.log"; exit 1; }
{
  echo "# Branch coverage of the decision core ($(date -u +%Y-%m-%d), coverage $(python3 -m coverage --version | sed -n 's/Coverage.py, version \([^ ]*\).*/\1/p'))"
  echo "# tests: $(echo $EXISTING | tr '\n' ' ')"
  echo "# $(tail -1 "$DATA/pytest.log")"
  python3 -m coverage report -m --precision=1
  python3 - <<'PY'
import json, subprocess
data = json.loads(subprocess.run(["python3", "-m", "coverage", "json", "-q", "-o", "-"], capture_output=True, text=True).stdout)
print("\nbranches only (taken / all), per module and per package:")
packages = {}
for name, f in sorted(data["files"].items()):
    s = f["summary"]
    total, missing = s["num_branches"], s["missing_branches"]
    unit = name.rsplit("/", 1)[0] + "/" if name.count("/") > 1 and not name.startswith("moe_registry/schemas") else name
    taken, all_ = packages.get(unit, (0, 0))
    packages[unit] = (taken + total - missing, all_ + total)
    print(f"  {name}: {total - missing} / {total}" + (f" = {100 * (total - missing) / total:.1f} %" if total else ""))
for unit, (taken, total) in sorted(packages.items()):
    print(f"  {unit}: {taken} / {total} = {100 * taken / total:.1f} %")
PY
} | tee "$OUT"
