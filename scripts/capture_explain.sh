#!/usr/bin/env bash
# Re-capture docs/terminal/*.txt: `moe-registry explain` / `select` in a real pseudo-terminal (script(1),
# NO_COLOR=1, COLUMNS unset, so the terminal's own width is used), escape sequences stripped. Run from
# the repository root. Prints each capture's line count, widest line and where "what to type" starts.
set -euo pipefail
out=docs/terminal
capture() {  # name cols command...
  local name=$1 cols=$2; shift 2
  local raw; raw=$(mktemp)
  script -q -c "stty cols $cols rows 200; NO_COLOR=1 python3 -m moe_registry.cli $*" "$raw" > /dev/null || true
  sed 's/\r$//' "$raw" | grep -v '^Script \(started\|done\)' | sed 's/\x1b\[[0-9;]*m//g' > "$out/$name-${cols}col.txt"
  rm -f "$raw"
  python3 -c "import sys; l=open(sys.argv[1], encoding='utf-8').read().splitlines(); \
w=[i + 1 for i, x in enumerate(l) if x.startswith('what to type')]; \
print(sys.argv[1], len(l), 'lines, widest', max(map(len, l)), ', what to type at line', w[0] if w else '-')" \
    "$out/$name-${cols}col.txt"
}
# The cases of issue 20, at 80 columns.
for spec in "explain-gpt-oss-120b-h100:explain gpt-oss-120b --device h100" \
            "explain-llama-4-scout-b200:explain llama-4-scout --device b200" \
            "explain-deepseek-v3-h100-tp8:explain deepseek-v3 --device h100 --tp 8" \
            "explain-deepseek-v3-h100-tp8-ep2-sglang:explain deepseek-v3 --device h100 --tp 8 --ep 2" \
            "explain-gemma4-nvfp4-h100-tp4-dp2:explain gemma-4-26b-a4b-nvfp4 --device h100 --tp 4 --dp 2" \
            "explain-qwen3-30b-fp8-block-h100-tp4:explain qwen3-30b-a3b --quant fp8_block --device h100 --tp 4" \
            "explain-gemma4-nvfp4-b200-tp8-nopad:explain gemma-4-26b-a4b-nvfp4 --device b200 --tp 8 --no-pad" \
            "select-gemma4-nvfp4-b200-tp8:select --experts 128 --top-k 8 --hidden 2816 --intermediate 704 --activation gelu_tanh --quant nvfp4 --device b200 --tp 8"; do
  capture "${spec%%:*}" 80 "${spec#*:}"
done
# The earlier captures, at 80 and 120 columns.
for spec in "explain-gemma4-nvfp4-h100:explain gemma-4-26b-a4b-nvfp4 --device h100" \
            "explain-qwen3-30b-h100-tp8:explain qwen3-30b-a3b --device h100 --tp 8" \
            "explain-gpt-oss-120b-b200-tp4-nopad-failed:explain gpt-oss-120b --device b200 --tp 4 --no-pad"; do
  for cols in 80 120; do
    capture "${spec%%:*}" "$cols" "${spec#*:}"
  done
done
