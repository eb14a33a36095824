#!/usr/bin/env bash
# One GPU-machine session: environment, GPU tests, verification records and benchmarks.
# Usage (on the device machine, from the repo root): benchmarks/gpu_session.sh STEP...
# Steps: smoke tests verify probe bench policy. Results go to $OUT (tarred into $OUT/results.tgz).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# vLLM's Marlin MoE kernels ship as sm_80 SASS + compute_80 PTX (no sm_90 cubin in the wheel's
# _moe_C): on an H100 the driver JIT-compiles each kernel variant on first use. Keep every compiled
# variant in the cache for the later steps of this session.
export CUDA_CACHE_MAXSIZE=4294967296
if [ -d .whl ] && [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
if [ -f .gpu/moe_C.so.xz ] && [ ! -f /tmp/moe_C.so ]; then xz -d -c .gpu/moe_C.so.xz > /tmp/moe_C.so; fi
[ -f /tmp/moe_C.so ] && export MOE_REGISTRY_VLLM_MOE_C=/tmp/moe_C.so
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s) ==="; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1; echo "rc=$? in $((SECONDS - t0))s"; tail -n 25 "$OUT/r/$name.log"; }
{ nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"; } \
  > "$OUT/r/env.txt" 2>&1; cat "$OUT/r/env.txt"
for s in "$@"; do case $s in
  smoke) step marlin-smoke 60 python3 tests/gpu/marlin_smoke.py ;;
  smokecases) for i in $(seq 0 13); do step "marlin-case-$i" 15 python3 tests/gpu/marlin_smoke.py --case "$i"; done ;;
  marlin) step marlin-tests 150 python3 -m pytest -m gpu tests/gpu/test_marlin_gpu.py -q -rs -p no:cacheprovider \
            -k "not fp4 and not nvfp4 and not mxfp4" ;;
  tests) step gpu-tests 170 python3 -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider ;;
  verify) step verify 100 python3 benchmarks/verify_gpu.py "$OUT/r/torch-grouped-mm-verify.json" ;;
  probe) MOE_REGISTRY_PROBE_TIMEOUT=20 step probe 170 python3 -m moe_registry.cli probe --out "$OUT/r/probe.json" ;;
  probe-sm90) step probe-sm90 110 python3 -m moe_registry.cli probe --backend torch-grouped-mm --backend reference \
            --out "$OUT/r/h100-probe.json" ;;
  marlin-models) step marlin-models 220 python3 -m pytest -m gpu tests/gpu/test_marlin_gpu.py -q -s -rs \
            -p no:cacheprovider -k "model_shapes and not nvfp4 and not mxfp4" ;;
  bench) step bench-moe 230 python3 benchmarks/bench_moe.py --out "$OUT/r/bench-moe.json" --plot "$OUT/r/bench-moe.png" ;;
  policy) step measured-policy 240 python3 benchmarks/measured_policy.py --out-dir "$OUT/r/measured-policy" \
            --budget-s 225 --cases gemma4-bf16,qwen3-bf16,qwen3-int4 ;;
esac; done
cp -f "$OUT"/*.txt "$OUT/r/" 2>/dev/null
tar czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$OUT/r"
