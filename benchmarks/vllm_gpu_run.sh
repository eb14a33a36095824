#!/usr/bin/env bash
# Issue 19: a real vllm.LLM run (vLLM 0.34.0) on the GPU machine, moe-registry's vLLM plugin loaded through its
# vllm.general_plugins entry point, a small Qwen3-MoE (2 layers, dummy weights), observe then enforce.
#
# The device has no network and no vLLM; one call carries at most 64 MiB, and the vLLM 0.34.0 wheel is ~340 MB.
# So a trimmed vLLM travels in two git-ignored parts, staged into /tmp/vllm034 on the warm machine by two calls
# made back to back (a machine stays warm ~30 s after a call; /tmp survives between calls while it does):
#   here:    benchmarks/vllm_gpu_run.sh bundle        # builds .gpu/vllm034/{a,b,c} (~57, ~49, ~26 MB)
#   device:  benchmarks/vllm_gpu_run.sh stage1        # carry .gpu/vllm034/a: env record, wheels -> /tmp/vllm034/site
#   device:  benchmarks/vllm_gpu_run.sh stage2        # carry .gpu/vllm034/b: _C part 2, FA3 .so, vLLM's files
#   device:  benchmarks/vllm_gpu_run.sh run [CASES]   # carry .gpu/vllm034/c: _moe_C; assemble, the runs ($OUT/*.log)
# The trimmed vLLM: every file of the wheel except the compiled extensions other than _C_stable_libtorch,
# _moe_C_stable_libtorch and vllm_flash_attn/_vllm_fa3_C (vllm_flash_attn must import: fa_utils imports it on CUDA;
# attention runs TRITON_ATTN; plus the small cumem_allocator, spinloop, fs_io_C; no FA2 / DeepGEMM / FlashMLA /
# deepselect / flashkda .so, each imported by vLLM under try/except or only by other models) and except C/C++/CUDA
# headers, JS, and the vllm-rs binary. Dependencies: the import-time Python packages the device image lacks
# (found by running vLLM 0.34 up to its worker on a CPU venv with the device's torch 2.11.0 and transformers 5.17).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STAGE=/tmp/vllm034
SITE=$STAGE/site
OUT="${OUT:-/tmp/vllm034-out}"

bundle() {  # here: VLLM_SITE = a site-packages holding vllm 0.34.0 (installed from the PyPI wheel --no-deps)
    local site="${VLLM_SITE:-/work/venv-vllm034/lib/python3.11/site-packages}" dst="$ROOT/.gpu/vllm034"
    local py="${DEV_PY:-/work/venv-dev312/bin/python}"
    rm -rf "$dst" && mkdir -p "$dst/a/whl" "$dst/b" "$dst/c"
    (cd "$site" && find vllm vllm-0.34.0.dist-info -type f ! -name "*.so" ! -name "*.pyc" ! -name "*.hpp" ! -name "*.h" \
        ! -name "*.cuh" ! -name "*.cu" ! -name "*.js" ! -path "*/vllm-rs" ! -path "*__pycache__*" | sort \
        | tar cf - -T - | xz -T2 -9 > "$dst/b/vllm-py.tar.xz")
    xz -T2 -9 -c "$site/vllm/_moe_C_stable_libtorch.abi3.so" > "$dst/c/moe_C.so.xz"
    xz -T2 -9 -c "$site/vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so" > "$dst/b/fa3.so.xz"
    (cd "$site" && tar cJf "$dst/c/small-so.tar.xz" vllm/cumem_allocator.abi3.so vllm/spinloop.abi3.so vllm/fs_io_C.abi3.so)
    xz -T2 -9 -c "$site/vllm/_C_stable_libtorch.abi3.so" > "$dst/C.so.xz"
    split -b 38000000 -d "$dst/C.so.xz" "$dst/C.so.xz.part-" && rm "$dst/C.so.xz"
    mv "$dst/C.so.xz.part-00" "$dst/a/" && mv "$dst"/C.so.xz.part-* "$dst/b/"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_31_x86_64 -d "$dst/a/whl" \
        annotated-types==0.8.0 apache-tvm-ffi==0.1.11 cachetools==8.0.3 cbor2==6.3.0 compressed-tensors==0.17.0 \
        fastapi==0.165.0 httpx2==2.17.0 llguidance==1.9.1 loguru==0.7.3 msgspec==0.23.0 openai==3.63.0 \
        opentelemetry-api==1.45.3 oss-harmony==0.0.11 partial-json-parser==0.2.1.1.post7 pybase64==1.5.1 \
        pydantic==2.14.4 pydantic_core==2.50.5 pyzmq==27.3.0 sniffio==1.3.1 starlette==1.10.0 \
        typing-inspection==0.4.5 typing_extensions==4.16.0 xgrammar==0.2.9 humming-kernels==0.1.19
    du -sh "$dst/a" "$dst/b" "$dst/c"
}

stage1() {  # device, carry .gpu/vllm034/a
    mkdir -p "$OUT" "$STAGE"
    {
        echo "# stage1 $(date -u +%Y-%m-%dT%H:%M:%SZ) tree at $(git -C "$ROOT" rev-parse HEAD 2>/dev/null) (device .git may be stale)"
        echo "# $STAGE before: $(ls "$STAGE" | tr '\n' ' ')"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        python3 -V; which python3
        python3 -m pip list --format=freeze 2>/dev/null
    } > "$OUT/env.txt" 2>&1
    cp "$ROOT"/.gpu/vllm034/a/C.so.xz.part-* "$STAGE/"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$ROOT"/.gpu/vllm034/a/whl/*.whl || return 1
    PYTHONPATH=$SITE python3 -c "import pydantic, zmq, msgspec, xgrammar, openai, fastapi, humming; print('stage1 deps import ok')"
    ls -la "$STAGE"
}

stage2() {  # device, carry .gpu/vllm034/b: the second part of _C, the flash-attn (FA3) extension, vLLM's files
    [ -d "$SITE" ] && ls "$STAGE"/C.so.xz.part-00 >/dev/null || { echo "stage1 files are gone (machine not warm)"; return 3; }
    cp "$ROOT"/.gpu/vllm034/b/* "$STAGE/" && ls -la "$STAGE"
}

run() {  # device, carry .gpu/vllm034/c (_moe_C); CASES default: bf16-observe bf16-enforce gptq-observe gptq-enforce
    mkdir -p "$OUT"
    [ -d "$SITE" ] && ls "$STAGE"/C.so.xz.part-01 "$STAGE"/fa3.so.xz >/dev/null || { echo "stage files are gone (machine not warm)"; return 3; }
    tar xJf "$STAGE/vllm-py.tar.xz" -C "$SITE" && tar xJf "$ROOT/.gpu/vllm034/c/small-so.tar.xz" -C "$SITE"
    cat "$STAGE"/C.so.xz.part-* | xz -d > "$SITE/vllm/_C_stable_libtorch.abi3.so" &
    xz -dc "$STAGE/fa3.so.xz" > "$SITE/vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so" &
    xz -dc "$ROOT/.gpu/vllm034/c/moe_C.so.xz" > "$SITE/vllm/_moe_C_stable_libtorch.abi3.so" &
    python3 -m compileall -q -j 16 "$SITE/vllm" > /dev/null 2>&1; wait  # byte-compile once, not in every run
    rm -rf "$STAGE/reg" && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$STAGE/reg" "$ROOT" || return 1
    export PYTHONPATH=$STAGE/reg:$SITE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
        PYTHONUNBUFFERED=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
    python3 - <<'PY' || return 1
import torch, vllm, importlib.metadata as m
torch.ops.load_library(vllm.__path__[0] + "/_C_stable_libtorch.abi3.so")
torch.ops.load_library(vllm.__path__[0] + "/_moe_C_stable_libtorch.abi3.so")
eps = [e.value for e in m.entry_points(group="vllm.general_plugins")]
import vllm.vllm_flash_attn as fa
print("run: vllm", m.version("vllm"), "torch", torch.__version__, "_C, _moe_C loaded; FA3", fa.FA3_AVAILABLE if hasattr(fa, "FA3_AVAILABLE") else "?", "; vllm.general_plugins:", eps)
PY
    for preset in qwen3-30b-a3b qwen3-30b-a3b-gptq-int4; do  # the registry's presets, cut to 2 layers, dummy weights
        python3 - "$ROOT/moe_registry/models/$preset.json" "$STAGE/models/$preset-2l" <<'PY'
import json, os, sys
cfg = {k: v for k, v in json.load(open(sys.argv[1])).items() if not k.startswith("_")}
cfg.update(num_hidden_layers=2, max_window_layers=2)
os.makedirs(sys.argv[2], exist_ok=True)
json.dump(cfg, open(os.path.join(sys.argv[2], "config.json"), "w"), indent=2)
PY
    done
    local case status=0
    CASES=${CASES:-bf16-observe bf16-enforce gptq-observe gptq-enforce}
    for case in $CASES; do
        local model=$STAGE/models/qwen3-30b-a3b-2l
        [[ $case == gptq-* ]] && model=$STAGE/models/qwen3-30b-a3b-gptq-int4-2l
        echo "=== $case ($(date -u +%H:%M:%S))"
        MOE_REGISTRY_VLLM=${case#*-} MOE_REGISTRY_VLLM_JSON=$OUT/plugin.json VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-DEBUG} \
            timeout "${CASE_LIMIT:-240}" python3 "$ROOT/benchmarks/vllm_llm_run.py" "$model" 8 > "$OUT/$case.log" 2>&1
        local rc=$?
        echo "=== $case rc=$rc"
        grep -E "^RUN |moe-registry|Using .*MoE|MoE backend|Error|error:" "$OUT/$case.log" | cut -c1-400 | tail -40
        if [ $rc -ne 0 ]; then status=$rc; [ "$case" = "${CASES%% *}" ] && break; fi  # first case failed: stop
    done
    return $status
}

cmd="${1:-}"; shift || true
case "$cmd" in
    bundle) bundle ;;
    stage1) stage1 ;;
    stage2) stage2 ;;
    run) CASES="${*:-${CASES:-}}" run ;;
    *) echo "usage: $0 bundle | stage1 | stage2 | run [CASES]"; exit 2 ;;
esac
