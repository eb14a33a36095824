#!/usr/bin/env bash
# Re-capture docs/terminal/*.txt: `moe-registry explain` in a real pseudo-terminal of 80 and 120 columns
# (script(1), NO_COLOR=1, COLUMNS unset), escape sequences stripped. Run from the repository root.
set -euo pipefail
out=docs/terminal
for spec in "gemma4-nvfp4-h100:gemma-4-26b-a4b-nvfp4 --device h100" \
            "gpt-oss-120b-h100:gpt-oss-120b --device h100" \
            "qwen3-30b-h100-tp8:qwen3-30b-a3b --device h100 --tp 8" \
            "gpt-oss-120b-b200-tp4-nopad-failed:gpt-oss-120b --device b200 --tp 4 --no-pad"; do
  name=${spec%%:*}; args=${spec#*:}
  for cols in 80 120; do
    raw=$(mktemp)
    script -q -c "stty cols $cols rows 200; NO_COLOR=1 python3 -m moe_registry.cli explain $args" "$raw" > /dev/null || true
    sed 's/\r$//' "$raw" | grep -v '^Script \(started\|done\)' | sed 's/\x1b\[[0-9;]*m//g' > "$out/explain-$name-${cols}col.txt"
    rm -f "$raw"
    python3 -c "import sys; l=open(sys.argv[1], encoding='utf-8').read().splitlines(); print(sys.argv[1], len(l), 'lines, widest', max(map(len, l)))" \
      "$out/explain-$name-${cols}col.txt"
  done
done
