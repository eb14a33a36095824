"""One real ``vllm.LLM`` run of a small MoE model with dummy weights, the moe-registry plugin loaded by vLLM
through its ``vllm.general_plugins`` entry point (issue 19). Run by ``benchmarks/vllm_gpu_run.sh``.

    MOE_REGISTRY_VLLM=observe|enforce python benchmarks/vllm_llm_run.py MODEL_DIR [MAX_TOKENS]

MODEL_DIR holds only a config.json (``load_format="dummy"``: random weights, ``skip_tokenizer_init``: token
ids in, token ids out). The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the
plugin's table, vLLM's log and the tokens land in one log.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> int:
    model = sys.argv[1]
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    import torch

    import vllm
    from vllm import LLM, SamplingParams

    print(f"RUN vllm {vllm.__version__} torch {torch.__version__} triton {__import__('triton').__version__} "
          f"device {torch.cuda.get_device_name(0)} model {model} MOE_REGISTRY_VLLM={os.environ.get('MOE_REGISTRY_VLLM')}",
          flush=True)
    start = time.time()
    llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, enforce_eager=True,
              attention_backend="TRITON_ATTN", gpu_memory_utilization=0.3, max_model_len=256, max_num_seqs=4,
              dtype="bfloat16", seed=0)
    print(f"RUN LLM built in {time.time() - start:.1f} s", flush=True)
    from moe_registry.engines.vllm import plugin

    state = plugin.STATE
    print(f"RUN plugin state: registered={state.registered} mode={state.mode} vllm={state.version} "
          f"disabled={state.disabled} hooks_pending={sorted(state.finder.callbacks) if state.finder else None}", flush=True)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, detokenize=False, ignore_eos=True)
    prompts = [{"prompt_token_ids": [151643, 785, 6722, 315, 9625, 374]}, {"prompt_token_ids": [1, 2, 3]}]
    start = time.time()
    outputs = llm.generate(prompts, params)
    print(f"RUN generate: {len(outputs)} requests in {time.time() - start:.2f} s", flush=True)
    for out in outputs:
        print(f"RUN TOKENS prompt {list(out.prompt_token_ids)} -> {list(out.outputs[0].token_ids)} "
              f"(finish {out.outputs[0].finish_reason})", flush=True)
    ok = all(len(o.outputs[0].token_ids) == max_tokens for o in outputs)
    print(f"RUN {'OK' if ok else 'SHORT'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
