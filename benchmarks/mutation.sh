#!/usr/bin/env bash
# Mutation testing of the decision core (issue 15): mutmut on the selection package (selection/*.py),
# schemas/capability.py and the planner package (planner/*.py) against the fast tests that state their
# rules. Too slow for every CI run: run it before stopping whenever the core changed, and commit the
# report it writes.
#
# Usage: benchmarks/mutation.sh [OUT_DIR]   (default benchmarks/results/mutation)
# MUTATE_ONLY="glob ..." and MUTATE_TESTS="tests/x.py ..." restrict it to other decision code (an engine's name
# mapping: MUTATE_ONLY=moe_registry/engines/sglang/names.py MUTATE_TESTS=tests/test_sglang_names.py).
# Needs: pip install mutmut==3.8.1 (plus the test extra). Runs in a temporary copy of the
# working tree, so the checkout is never touched; OMP_NUM_THREADS=1, Hypothesis derandomized.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/benchmarks/results/mutation}"
mkdir -p "$OUT"
# MUTATION_WORK=DIR keeps the copy (and mutmut's cache) there, for `mutmut show` / reruns afterwards.
if [ -n "${MUTATION_WORK:-}" ]; then
  WORK="$MUTATION_WORK"; mkdir -p "$WORK"
else
  WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
fi
git -C "$ROOT" ls-files -co --exclude-standard -z | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
cd "$WORK"
TESTS="${MUTATION_TESTS:-${MUTATE_TESTS:-tests/test_selection_rules.py tests/test_selection.py tests/test_selection_properties.py tests/test_schemas.py
tests/test_planner.py tests/test_published_configs.py tests/test_memory.py tests/test_presets.py tests/test_quant_config.py
tests/test_declared.py tests/test_registry.py tests/test_capability_rules.py tests/test_planner_rules.py tests/test_selection_edges.py tests/test_core_arguments.py
tests/test_environment.py tests/test_deploy_answer.py tests/test_deploy_rules.py tests/test_real_configs.py
tests/test_planner_layout_rules.py}}"
# MUTATION_ONLY="a.py b.py" (or MUTATE_ONLY / MUTATE) restricts the mutants to the modules a change touched.
ONLY="${MUTATION_ONLY:-${MUTATE_ONLY:-${MUTATE:-moe_registry/selection/*.py moe_registry/schemas/capability.py moe_registry/planner/*.py}}}"
{
  echo "[mutmut]"
  echo "source_paths=moe_registry"
  printf 'also_copy=\n  docs\n'
  echo "only_mutate="
  for m in $ONLY; do echo "  $m"; done
  echo "pytest_add_cli_args_test_selection="
  for t in $TESTS; do [ -f "$t" ] && echo "  $t"; done
  # The hint walker re-plans every preset on every device: too slow to run per mutant.
  # One argument a line (mutmut splits a multi-line value on newlines only).
  printf 'pytest_add_cli_args=\n  -p\n  no:cacheprovider\n  -x\n  -q\n  --hypothesis-seed=0\n  -k\n  not every_hint_of_every_preset\n'

} > setup.cfg
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
START=$(date +%s)
# MUTATION_NAMES="pattern ..." runs only those mutants (mutmut's fnmatch names, e.g. the functions a change touched).
# shellcheck disable=SC2086
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" ${MUTATION_NAMES:-} > "$OUT/run.log" 2>&1 || true
# Keep the log readable: drop the spinner frames, keep the last progress line.
python3 - "$OUT/run.log" <<'PY'
import sys
lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().replace("\r", "\n").splitlines()
spin = [ln for ln in lines if ln[:1] and "\u2800" <= ln[0] <= "\u28ff"]
kept = [ln for ln in lines if ln.strip() and not ("\u2800" <= ln[:1] <= "\u28ff")]
open(sys.argv[1], "w", encoding="utf-8").write("\n".join(kept + spin[-1:]) + "\n")
PY
# A red clean run (or stats collection) means no mutant was tested: say so instead of a 0 % report.
if grep -qE 'Failed to run clean test|failed to collect stats' "$OUT/run.log"; then
  echo "mutation.sh: the tests fail on the unmutated code; see $OUT/run.log" >&2; exit 1
fi
mutmut results --all true > "$OUT/results.txt" 2>&1 || true
python3 "$ROOT/benchmarks/mutation_report.py" "$OUT/results.txt" "$((($(date +%s) - START)))" > "$OUT/summary.md"
# Each survivor's diff, for the review the report asks for.
grep -E ': survived' "$OUT/results.txt" | sed 's/:.*//' | while read -r m; do
  echo "### $m"; mutmut show "$m" 2>/dev/null | sed -n '1,12p'; done > "$OUT/survivors.diff" || true
cat "$OUT/summary.md"
