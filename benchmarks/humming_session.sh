#!/usr/bin/env bash
# GPU-machine steps for the humming backend (issue 9). Usage: benchmarks/humming_session.sh STEP...
# Steps: run tests probe bench. Logs and records go to $OUT/r (tarred into $OUT/humming.tgz).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Humming's compiled kernels persist here for every later step of this session (its default is
# ~/.humming/cache; set explicitly so the steps share one cache).
export HUMMING_CACHE_DIR=${HUMMING_CACHE_DIR:-/tmp/humming-cache} CUDA_CACHE_MAXSIZE=4294967296
if [ -d .whl ] && { [ ! -d /tmp/site/humming ] || [ ! -d /tmp/site/pydantic ]; }; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
if [ -f .gpu/moe_C.so.xz ] && [ ! -f /tmp/moe_C.so ]; then xz -d -c .gpu/moe_C.so.xz > /tmp/moe_C.so; fi
[ -f /tmp/moe_C.so ] && export MOE_REGISTRY_VLLM_MOE_C=/tmp/moe_C.so
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s) ==="; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1; echo "rc=$? in $((SECONDS - t0))s"; tail -n 40 "$OUT/r/$name.log"; }
{ nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys, humming; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(), 'humming', humming.__version__)"
  git log -1 --format='commit %H %cI' 2>/dev/null; date -u; } > "$OUT/r/env.txt" 2>&1; cat "$OUT/r/env.txt"
B=(--backend humming --backend marlin --backend torch-grouped-mm)
for s in "$@"; do case $s in
  run) step run-gemma4-nvfp4 90 python3 -m moe_registry.cli run --preset gemma-4-26b-a4b-nvfp4 --layer 0 --tokens 64 --json ;;
  tests) HUMMING_GPU_TABLE="$OUT/r/humming_gpu_table.txt" step gpu-tests "${TESTS_LIMIT:-240}" \
           python3 -m pytest -m gpu tests/gpu/test_humming_gpu.py -q -rs -p no:cacheprovider ;;
  probe) MOE_REGISTRY_PROBE_TIMEOUT=60 step probe "${PROBE_LIMIT:-150}" python3 -m moe_registry.cli probe --backend humming \
           --quick --out "$OUT/r/h200-humming-probe.json" ;;
  bench) for c in "gemma-4-26b-a4b-nvfp4:" "qwen3-30b-a3b-gptq-int4:" "mixtral-8x7b:int4_w4a16:g128:zp" "gpt-oss-120b:"; do
           p=${c%%:*}; q=${c#*:}; step "bench-$p" "${BENCH_LIMIT:-100}" python3 -m moe_registry.cli bench "$p" ${q:+--quant "$q"} \
             "${B[@]}" --tokens 1,16,64,512,4096 --reps 20 --out "$OUT/r/bench-$p.json" --plot "$OUT/r/bench-$p.png"; done ;;
esac; done
tar czf "$OUT/humming.tgz" -C "$OUT" r && rm -rf "$OUT/r"
