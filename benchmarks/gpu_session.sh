#!/usr/bin/env bash
# One GPU-machine session: environment, GPU tests, verification records and benchmarks, every backend.
# Usage (on the device machine, from the repo root): benchmarks/gpu_session.sh STEP...
# Results go to $OUT/r (tarred into $OUT/results.tgz). Carry `.whl` (pydantic and humming-kernels wheels:
# the image lacks them) and `.gpu` (vLLM's _moe_C for Marlin and the vLLM-shim side of bench_moe.py).
#
# Steps:
#   tests            pytest -m gpu tests/gpu (every backend)        marlin-models  Marlin at model shapes
#   smoke|smokecases Marlin single-GEMM smoke checks                verify         torch-grouped-mm record
#   probe            moe-registry probe, every backend here (quick) probe-sm90     grouped-mm + reference, full
#   probe-warm       fill Humming's JIT cache for the probe (parallel)
#   run              moe-registry run, Gemma 4 NvFP4 layer 0        humming-bench  humming vs marlin vs grouped-mm
#   triton-tune      tune the Triton configs for the bench shapes   bench          benchmarks/bench_moe.py (Triton vs vLLM)
#   policy           benchmarks/measured_policy.py                  bench-smoke    moe-registry bench, Qwen3 bf16, 2 backends
#   decode-tests     graph capture of every cuda_graphs backend (tests/gpu/test_graph_capture_gpu.py, -k $DTESTS_K)
#                    and oai-triton-kernels against the reference
#   decode-bench     benchmarks/decode_bench.py: the four 4-bit shapes, T 1..4096, graphed decode, HBM floor
# oai-triton-kernels needs triton_kernels: carry vLLM's vendored copy as .gpu/tk/vllm/third_party/triton_kernels
# (unzip it from the vLLM wheel; `vllm/third_party/__init__.py` beside it, no vllm/__init__.py).
# Limits per step come from <STEP>_LIMIT variables (seconds), so one call can fit a lease.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# vLLM's Marlin MoE kernels ship as sm_80 SASS + compute_80 PTX (no sm_90 cubin in the wheel's _moe_C): on an
# H100/H200 the driver JIT-compiles each variant on first use; Humming JIT-compiles with NVRTC into its own cache.
# Keep both caches for every later step of this session.
export CUDA_CACHE_MAXSIZE=4294967296 HUMMING_CACHE_DIR=${HUMMING_CACHE_DIR:-/tmp/humming-cache}
if [ -d .whl ] && { [ ! -d /tmp/site/pydantic ] || [ ! -d /tmp/site/humming ]; }; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
if [ -f .gpu/moe_C.so.xz ] && [ ! -f /tmp/moe_C.so ]; then xz -d -c .gpu/moe_C.so.xz > /tmp/moe_C.so; fi
[ -f /tmp/moe_C.so ] && export MOE_REGISTRY_VLLM_MOE_C=/tmp/moe_C.so
[ -d .gpu/tk/vllm/third_party/triton_kernels ] && export PYTHONPATH="$PYTHONPATH:$(cd .gpu/tk && pwd)"
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s) ==="; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1; echo "rc=$? in $((SECONDS - t0))s"; tail -n "${TAIL:-25}" "$OUT/r/$name.log"; }
{ nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys, triton; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(), 'triton', triton.__version__)"
  python3 -c "import humming; print('humming-kernels', humming.__version__)"
  git log -1 --format='commit %H %cI' 2>/dev/null; date -u; } > "$OUT/r/env.txt" 2>&1; cat "$OUT/r/env.txt"
PYTEST=(python3 -m pytest -m gpu -q -rs -p no:cacheprovider)
TRITON_LAYERS=("layer:experts=128,top_k=8,hidden=2816,intermediate=704,activation=gelu_tanh"
               "layer:experts=128,top_k=8,hidden=2048,intermediate=768,activation=silu"
               "layer:experts=8,top_k=2,hidden=4096,intermediate=14336,activation=silu"
               "layer:experts=256,top_k=8,hidden=7168,intermediate=2048,activation=silu,quant=fp8_block"
               "layer:experts=128,top_k=8,hidden=4096,intermediate=1536,activation=silu,quant=fp8_block")
for s in "$@"; do case $s in
  smoke) step marlin-smoke "${SMOKE_LIMIT:-60}" python3 tests/gpu/marlin_smoke.py ;;
  smokecases) for i in $(seq 0 13); do step "marlin-case-$i" 15 python3 tests/gpu/marlin_smoke.py --case "$i"; done ;;
  tests) HUMMING_GPU_TABLE="$OUT/r/humming_gpu_table.txt" step gpu-tests "${TESTS_LIMIT:-420}" "${PYTEST[@]}" tests/gpu ;;
  marlin-models) step marlin-models "${MODELS_LIMIT:-220}" "${PYTEST[@]}" -s tests/gpu/test_marlin_gpu.py \
                   -k "model_shapes and not nvfp4 and not mxfp4" ;;
  verify) step verify "${VERIFY_LIMIT:-100}" python3 benchmarks/verify_gpu.py "$OUT/r/torch-grouped-mm-verify.json" ;;
  probe) MOE_REGISTRY_PROBE_TIMEOUT=60 step probe "${PROBE_LIMIT:-240}" python3 -m moe_registry.cli probe --quick \
           ${PROBE_BACKENDS:---backend humming --backend triton-fused-moe --backend torch-grouped-mm --backend reference} \
           --out "$OUT/r/h200-probe.json" ;;
  # Humming JIT-compiles every (format, GEMM shape, features) on first use (~10-15 s each, one NVRTC thread):
  # fill its cache with one probe per quant kind in parallel, so the recorded probe then measures the kernels.
  probe-warm) for k in ${WARM_KINDS:-int4_w4a16 nvfp4 nvfp4_w4a16 mxfp4}; do
                MOE_REGISTRY_PROBE_TIMEOUT=120 timeout "${WARM_LIMIT:-300}" python3 -c "from moe_registry.verify.probe import \
run_probe; r = run_probe(['humming'], quick=True, quant_kinds=['$k'], progress=False); print('$k', r.summary)" \
                  > "$OUT/r/probe-warm-$k.log" 2>&1 & done; t0=$SECONDS; wait; echo "probe-warm: $((SECONDS - t0))s"
              tail -n 3 "$OUT"/r/probe-warm-*.log ;;
  probe-sm90) step probe-sm90 "${PROBE_LIMIT:-110}" python3 -m moe_registry.cli probe --backend torch-grouped-mm \
                --backend reference --out "$OUT/r/h200-probe-full.json" ;;
  run) step run-gemma4-nvfp4 "${RUN_LIMIT:-90}" python3 -m moe_registry.cli run --preset gemma-4-26b-a4b-nvfp4 --layer 0 \
         --tokens 64 --json ;;
  humming-bench) for c in "gemma-4-26b-a4b-nvfp4:" "qwen3-30b-a3b-gptq-int4:" "mixtral-8x7b:int4_w4a16:g128:zp" "gpt-oss-120b:"; do
                   p=${c%%:*}; q=${c#*:}; step "bench-$p" "${BENCH_LIMIT:-100}" python3 -m moe_registry.cli bench "$p" \
                     ${q:+--quant "$q"} --backend humming --backend marlin --backend torch-grouped-mm \
                     --tokens 1,16,64,512,4096 --reps 20 --out "$OUT/r/bench-$p.json" --plot "$OUT/r/bench-$p.png"; done ;;
  bench-smoke) step bench-smoke "${BENCH_LIMIT:-90}" python3 -m moe_registry.cli bench qwen3-30b-a3b --backend triton-fused-moe \
                 --backend torch-grouped-mm --tokens 1,64,512 --reps 10 --out "$OUT/r/bench-smoke.json" ;;
  # Tuned files go to the package's configs/; their names ('=' and ',') cannot come back through $OUT, so they
  # travel as configs.tgz.
  triton-tune) i=0; for l in "${TRITON_LAYERS[@]:0:${TUNE_LAYERS:-5}}"; do i=$((i + 1))
                 step "tune-$i" "${TUNE_LIMIT:-60}" python3 -m moe_registry.cli tune "$l" --budget-s "${TUNE_BUDGET:-25}" \
                   --tokens "${TUNE_TOKENS:-1,16,64,512,4096}"; done
               tar czf "$OUT/r/configs.tgz" -C moe_registry/backends/triton_fused_moe configs ;;
  bench) TAIL=70 step bench-moe "${BENCH_LIMIT:-480}" python3 benchmarks/bench_moe.py --out "$OUT/r/bench-moe-h200.json" \
           --plot "$OUT/r/bench-moe-h200.png" ;;
  policy) step measured-policy "${POLICY_LIMIT:-240}" python3 benchmarks/measured_policy.py --out-dir "$OUT/r/measured-policy" \
            --budget-s 225 --cases gemma4-bf16,qwen3-bf16,qwen3-int4 ;;
  decode-tests) GRAPH_CAPTURE_TABLE="$OUT/r/graph_capture_table.txt" TAIL=40 step decode-tests "${DTESTS_LIMIT:-330}" \
                  "${PYTEST[@]}" -s tests/gpu/test_graph_capture_gpu.py tests/gpu/test_oai_triton_gpu.py \
                  -k "${DTESTS_K:-humming or marlin or oai}" ;;
  decode-bench) TAIL=90 step decode-bench "${DBENCH_LIMIT:-250}" python3 benchmarks/decode_bench.py \
                  --out-dir "$OUT/r/decode" --budget-s "${DBENCH_BUDGET:-235}" ${DBENCH_CASES:+--cases "$DBENCH_CASES"} ;;
  *) echo "unknown step $s" ;;
esac; done
cp -f "$OUT"/*.txt "$OUT/r/" 2>/dev/null
tar czf "$OUT/results.tgz" -C "$OUT" r && rm -rf "$OUT/r"
