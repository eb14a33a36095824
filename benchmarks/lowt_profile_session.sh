#!/usr/bin/env bash
# GPU session for triton-lowt-moe after a kernel change: the GPU tests (lowt + graph capture of humming and ours)
# alone, then the benchmark warm-up and the profile's compiles in parallel, then the per-launch profile
# (benchmarks/lowt_profile.py) and the timed benchmark alone on the GPU. From the repo root with .whl and
# .gpu/moe_C.so.xz carried; results under $OUT/r.
set -u; mkdir -p $OUT/r
pip install --no-index --no-deps --target /tmp/site .whl/*.whl -q 2>/dev/null; xz -dc .gpu/moe_C.so.xz > /tmp/moe_C.so
export PYTHONPATH=/tmp/site:$PWD MOE_REGISTRY_VLLM_MOE_C=/tmp/moe_C.so PYTHONUNBUFFERED=1 HUMMING_CACHE_DIR=/tmp/hc
# A Triton cache filled without a GPU (benchmarks/lowt_precompile.py), when carried.
if [ -f .gpu/lowt-tcache.tar.xz ]; then mkdir -p /tmp/lowt-tc && tar xJf .gpu/lowt-tcache.tar.xz -C /tmp/lowt-tc &&
  export TRITON_CACHE_DIR=/tmp/lowt-tc/tcache; fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/r/env.txt; python3 -c "import torch,triton;print(torch.__version__,triton.__version__)" >> $OUT/r/env.txt
t0=$SECONDS
# The tests first and alone: beside the warm-up processes (Mixtral's held 32 GB) 14 of 20 ran out of memory (343abfb)
timeout ${TESTS_LIMIT:-200} python3 -m pytest -m gpu -v -p no:cacheprovider ${TESTS_ARGS:-} tests/gpu/test_triton_lowt_moe_gpu.py tests/gpu/test_graph_capture_gpu.py -k "${TESTS_K:-test_triton_lowt_moe_gpu or humming or lowt or graphed_experts_match_eager}" > $OUT/r/gpu-tests.log 2>&1; echo "tests rc=$? at $((SECONDS-t0))s" >> $OUT/r/gpu-tests.log
# Nsight Compute alone on the GPU (NCU=1): per launch of one forward per config, DRAM throughput, occupancy, stalls
[ "${NCU:-0}" = 1 ] && for L in ${NCU_LAYERS:-gemma4-nvfp4 qwen3-int4}; do
  timeout ${NCU_LIMIT:-90} ncu --clock-control none --profile-from-start off --nvtx -k regex:gemv --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats python3 benchmarks/lowt_profile.py --ncu --layers $L --tokens ${NCU_T:-1} \
    --configs ${NCU_CONFIGS:-gemv8,gemv8px,gemv16} >> $OUT/r/ncu.txt 2>&1; echo "ncu $L rc=$? at $((SECONDS-t0))s" >> $OUT/r/ncu.txt
done
[ "${BENCH:-1}" = 1 ] && { python3 benchmarks/bench_lowt.py --phase warm --variants ${VARIANTS:-default} ${BENCH_ARGS:-} --warm-limit ${WARM_LIMIT:-200} > $OUT/r/warm.log 2>&1 & }
[ "${PROFILE:-1}" = 1 ] && python3 benchmarks/lowt_profile.py ${PROFILE_ARGS:-} > /dev/null 2>&1   # compile only (timings discarded: GPU shared)
wait; echo "parallel part done at $((SECONDS-t0))s"; tail -3 $OUT/r/gpu-tests.log
[ "${PROFILE:-1}" = 1 ] && { python3 benchmarks/lowt_profile.py ${PROFILE_ARGS:-} --out $OUT/r/profile.json > $OUT/r/profile.log 2>&1; cat $OUT/r/profile.log; }
[ "${BENCH:-1}" = 1 ] && timeout ${BENCH_LIMIT:-150} python3 benchmarks/bench_lowt.py --phase time --variants ${VARIANTS:-default} ${BENCH_ARGS:-} --out $OUT/r/lowt-bench.json > $OUT/r/bench.log 2>&1
echo "bench rc=$? at $((SECONDS-t0))s"; [ -f $OUT/r/bench.log ] && sed -n '/^layer /,$p' $OUT/r/bench.log
