#!/usr/bin/env bash
# Tests that need an engine wheel, each in the engine's own venv (never in .ci/run):
#   scripts/engine_tests.sh sglang    # SGLang 0.5.23: builds /work/venv-sglang0523 (or $SGLANG_VENV) if missing
# Writes the log to docs/verification/<engine>-engine-tests.log, naming the commit it ran at.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

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
            "cuda-python>=13.0" nvidia-ml-py tabulate uvicorn setproctitle fastapi triton pydantic pluggy rich pytest
    fi
    "$venv/bin/pip" install -q --no-deps -e "$ROOT"  # refreshes the entry points (sglang.srt.plugins) of this tree
    local log="$ROOT/docs/verification/sglang-engine-tests.log"
    {
        echo "# scripts/engine_tests.sh sglang at $(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet -- . ':!docs/verification/*engine-tests.log' || echo ' (+ uncommitted changes)'), $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "# $("$venv/bin/python" -c 'import importlib.metadata as m; print("sglang", m.version("sglang"), "torch", m.version("torch"))')"
        cd "$ROOT" && "$venv/bin/python" -m pytest -q -m sglang -p no:cacheprovider tests/test_sglang_engine.py 2>&1
    } | tee "$log"
    return "${PIPESTATUS[0]}"
}

case "${1:-}" in
    sglang) sglang_tests ;;
    *) echo "usage: $0 sglang" >&2; exit 2 ;;
esac
