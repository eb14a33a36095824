#!/usr/bin/env bash
# GPU-machine steps for triton-fused-moe (issue 10). Usage: benchmarks/triton_session.sh STEP...
# Steps: tests tune quick bench probe. Logs and records go to $OUT/r.
# Needs .gpu/ carried (vLLM's _moe_C and the shim from benchmarks/make_vllm_shim.py) for the vLLM side.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
if [ -f .gpu/moe_C.so.xz ] && [ ! -f /tmp/moe_C.so ]; then xz -d -c .gpu/moe_C.so.xz > /tmp/moe_C.so; fi
[ -f /tmp/moe_C.so ] && export MOE_REGISTRY_VLLM_MOE_C=/tmp/moe_C.so
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s) ==="; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1; echo "rc=$? in $((SECONDS - t0))s"; tail -n "${TAIL:-30}" "$OUT/r/$name.log"; }
{ nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys, triton; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(), 'triton', triton.__version__)"
  date -u; } > "$OUT/r/env.txt" 2>&1; cat "$OUT/r/env.txt"
LAYERS=("layer:experts=128,top_k=8,hidden=2816,intermediate=704,activation=gelu_tanh"
        "layer:experts=128,top_k=8,hidden=2048,intermediate=768,activation=silu"
        "layer:experts=8,top_k=2,hidden=4096,intermediate=14336,activation=silu"
        "layer:experts=256,top_k=8,hidden=7168,intermediate=2048,activation=silu,quant=fp8_block"
        "layer:experts=128,top_k=8,hidden=4096,intermediate=1536,activation=silu,quant=fp8_block")
for s in "$@"; do case $s in
  tests) step gpu-tests "${TESTS_LIMIT:-200}" python3 -m pytest -m gpu tests/gpu/test_triton_fused_moe_gpu.py -q -rs -x \
           -p no:cacheprovider ;;
  # Tuned files go to the package's configs/ (later steps use them); their names ('=' and ',') cannot come back
  # through $OUT, so they travel as configs.tgz.
  tune) i=0; for l in "${LAYERS[@]:0:${TUNE_LAYERS:-5}}"; do i=$((i + 1))
          step "tune-$i" "${TUNE_LIMIT:-60}" python3 -m moe_registry.cli tune "$l" --budget-s "${TUNE_BUDGET:-25}" \
            --tokens "${TUNE_TOKENS:-1,16,64,512,4096}"; done
        tar czf "$OUT/r/configs.tgz" -C moe_registry/backends/triton_fused_moe configs ;;
  quick) step bench-quick "${QUICK_LIMIT:-120}" python3 benchmarks/bench_moe.py --shapes "${QUICK_SHAPES:-qwen3-30b-a3b}" \
           --tokens 1,64,4096 --out "$OUT/r/bench-quick.json" ;;
  bench) TAIL=70 step bench "${BENCH_LIMIT:-480}" python3 benchmarks/bench_moe.py --out "$OUT/r/bench-moe-h200.json" \
           --plot "$OUT/r/bench-moe-h200.png" ;;
  probe) MOE_REGISTRY_PROBE_TIMEOUT=60 step probe "${PROBE_LIMIT:-150}" python3 -m moe_registry.cli probe \
           --backend triton-fused-moe ${PROBE_QUICK---quick} --out "$OUT/r/h200-triton-fused-moe-probe.json" ;;
esac; done
