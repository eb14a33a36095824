#!/usr/bin/env bash
# The GPU-machine session of triton-lowt-moe (issue 21): GPU tests, the probe and the benchmark's compile
# warm-up in parallel (none of them is timed), then the timed benchmark alone on the GPU. From the repo root, with the carried
# wheels installed on PYTHONPATH, MOE_REGISTRY_VLLM_MOE_C set (Marlin, vLLM's align / sum) and the vLLM shim
# at .gpu/vllm_shim (benchmarks/make_vllm_shim.py). Results under $OUT/r (seven files).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 CUDA_CACHE_MAXSIZE=4294967296 HUMMING_CACHE_DIR=${HUMMING_CACHE_DIR:-/tmp/humming-cache}
# A Triton cache filled without a GPU (benchmarks/lowt_precompile.py), when carried.
if [ -f .gpu/lowt-tcache.tar.xz ]; then mkdir -p /tmp/lowt-tc && tar xJf .gpu/lowt-tcache.tar.xz -C /tmp/lowt-tc &&
  export TRITON_CACHE_DIR=/tmp/lowt-tc/tcache; fi
{ nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(), 'triton', triton.__version__)"
  python3 -c "import humming; print('humming-kernels', humming.__version__)"; date -u; } > "$OUT/r/env.txt" 2>&1
cat "$OUT/r/env.txt"
t0=$SECONDS
if [ "${LOWT_TESTS:-1}" = 1 ]; then
  timeout "${TESTS_LIMIT:-300}" python3 -m pytest -m gpu -q -rs -p no:cacheprovider \
    ${TESTS_FILES:-tests/gpu/test_triton_lowt_moe_gpu.py} ${TESTS_K:+-k "$TESTS_K"} > "$OUT/r/gpu-tests.log" 2>&1 &
  TESTS=$!
fi
if [ "${LOWT_PROBE:-1}" = 1 ]; then
  MOE_REGISTRY_PROBE_TIMEOUT=120 timeout "${PROBE_LIMIT:-240}" python3 -m moe_registry.cli probe --quick \
    --backend triton-lowt-moe --out "$OUT/r/probe.json" > "$OUT/r/probe.log" 2>&1 &
  PROBE=$!
fi
python3 benchmarks/bench_lowt.py --phase warm --warm-limit "${WARM_LIMIT:-200}" ${BENCH_ARGS:-} > "$OUT/r/warm.log" 2>&1
echo "warm rc=$? at $((SECONDS - t0))s"; tail -n 5 "$OUT/r/warm.log"
[ -n "${TESTS:-}" ] && { wait "$TESTS"; echo "tests rc=$? at $((SECONDS - t0))s"; tail -n 4 "$OUT/r/gpu-tests.log"; }
[ -n "${PROBE:-}" ] && { wait "$PROBE"; echo "probe rc=$? at $((SECONDS - t0))s"; tail -n 6 "$OUT/r/probe.log"; }
timeout "${TIME_LIMIT:-200}" python3 benchmarks/bench_lowt.py --phase time --out "$OUT/r/lowt-bench.json" ${BENCH_ARGS:-} \
  > "$OUT/r/bench.log" 2>&1
echo "bench rc=$? at $((SECONDS - t0))s"
grep -E "^ERROR|check " "$OUT/r/bench.log" | grep -v "e-03\|e-04" | head -20
sed -n '/^layer /,$p' "$OUT/r/bench.log"
