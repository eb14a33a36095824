#!/usr/bin/env bash
# Tests that need an engine wheel, each in the engine's own venv (never in .ci/run: a 340 MB vLLM wheel
# or SGLang's import tree per CI run would make CI depend on them):
#   scripts/engine_tests.sh vllm [VENV]     # vLLM 0.34.0, a fresh venv (default .engine-venv-vllm in the repository)
#   scripts/engine_tests.sh sglang          # SGLang 0.5.23: builds /work/venv-sglang0523 (or $SGLANG_VENV) if missing
# Each writes docs/verification/<engine>-engine-tests.log, naming the commit it ran at.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

header() {  # the commit, and whether the tree had uncommitted changes (the logs themselves aside)
    echo "# scripts/engine_tests.sh $1 at $(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet -- . ':!docs/verification/*engine-tests.log' || echo ' (+ uncommitted changes)'), $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m)"
}

# vLLM is installed --no-deps (its pins pull a CUDA torch: vLLM 0.34.0 is built for torch 2.14, here the
# CPU torch 2.13.0 only imports it) plus what its imports need (../shared/reference/vllm-selection-on-cpu.md).
# VLLM_WHEEL=path/to/vllm-0.34.0-*.whl uses a downloaded wheel instead of PyPI.
vllm_tests() {
    local venv="${1:-$ROOT/.engine-venv-vllm}"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q --no-deps "torch==2.13.0"
    "$venv/bin/pip" install -q --no-deps "${VLLM_WHEEL:-vllm==0.34.0}"
    "$venv/bin/pip" install -q packaging numpy 'pydantic>=2.12' regex cachetools psutil tqdm pyyaml cloudpickle msgspec \
        requests einops typing_extensions filelock pyzmq blake3 py-cpuinfo cbor2 'transformers>=5.16.1,<5.23' aiohttp \
        oss-harmony openai pillow pybase64 uvloop prometheus_client xgrammar fastapi partial_json_parser llguidance \
        loguru triton sympy networkx jinja2 fsspec
    "$venv/bin/pip" install -q --no-deps compressed-tensors==0.17.0 flashinfer-python==0.7.4 apache-tvm-ffi==0.1.11 \
        nvidia-ml-py humming-kernels==0.1.19 cuda-bindings cuda-pathfinder
    "$venv/bin/pip" install -q pluggy rich pytest google-re2
    "$venv/bin/pip" install -q --no-deps -e "$ROOT"
    local log="$ROOT/docs/verification/vllm-engine-tests.log"
    {
        header vllm
        "$venv/bin/pip" list --format=freeze 2>/dev/null | grep -iE "^(vllm|torch|flashinfer-python|transformers|triton|humming-kernels)=="
        cd "$ROOT" && "$venv/bin/python" -m pytest -q -p no:cacheprovider -m vllm tests/test_vllm_engine.py 2>&1
    } | tee "$log"
    return "${PIPESTATUS[0]}"
}

sglang_tests() {
    local venv="${SGLANG_VENV:-/work/venv-sglang0523}"
    if [ ! -x "$venv/bin/python" ]; then
        # SGLang's own requirements pull CUDA wheels: install it --no-deps plus only what its imports need (the
        # CPU torch 2.13.0 wheel; sglang-kernel, whose Python files the worker reads; flashinfer so SGLang sees it).
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip "setuptools>=77"
        "$venv/bin/pip" install -q torch==2.13.0
        "$venv/bin/pip" install -q --no-deps sglang==0.5.23 sglang-kernel==0.4.10 flashinfer-python==0.7.2 \
            compressed-tensors==0.18.0 sentencepiece==0.2.1 apache-tvm-ffi==0.1.11
        "$venv/bin/pip" install -q transformers==5.19.0 tokenizers==0.23.2 openai==2.8.0 orjson psutil pybase64 \
            requests pillow starlette msgspec pyzmq tqdm IPython aiohttp dill gguf partial_json_parser einops \
            "cuda-python>=13.0" nvidia-ml-py tabulate uvicorn setproctitle fastapi triton pydantic pluggy rich pytest \
            google-re2 loguru
    fi
    "$venv/bin/pip" install -q --no-deps -e "$ROOT"  # refreshes the entry points (sglang.srt.plugins) of this tree
    local log="$ROOT/docs/verification/sglang-engine-tests.log"
    {
        header sglang
        echo "# $("$venv/bin/python" -c 'import importlib.metadata as m; print("sglang", m.version("sglang"), "torch", m.version("torch"))')"
        cd "$ROOT" && "$venv/bin/python" -m pytest -q -m sglang -p no:cacheprovider tests/test_sglang_engine.py 2>&1
    } | tee "$log"
    return "${PIPESTATUS[0]}"
}

case "${1:-}" in
    vllm) vllm_tests "${2:-}" ;;
    sglang) sglang_tests ;;
    *) echo "usage: $0 vllm [VENV] | sglang" >&2; exit 2 ;;
esac
