#!/usr/bin/env python3
"""Build a minimal ``vllm`` package that runs vLLM 0.33.0's own Triton fused-MoE code without vLLM.

    python benchmarks/make_vllm_shim.py [--src /work/ref/vllm] [--out .gpu/vllm_shim]

Real, unmodified vLLM files (from the PyPI wheel, unpacked under ``--src``):
``model_executor/layers/fused_moe/{fused_moe.py, moe_align_block_size.py, activation.py}``, the
H200 tuned ``configs/*.json`` and ``utils/math_utils.py``. Everything else they import is a small
stub written here: ``envs`` defaults, a CUDA ``current_platform``, ``_custom_ops`` calling
``torch.ops._moe_C`` (``moe_align_block_size``, ``moe_sum``; load vLLM's ``_moe_C`` library first),
the two helpers of ``config.py`` / ``modular_kernel.py`` that ``fused_experts_impl`` calls, and
``utils.moe_kernel_quantize_input`` (the FP8 activation quantization: vLLM's ``_C`` op is not
carried, so the same recipe runs as moe-registry's Triton kernel). ``torch.ops._C.*_and_mul``,
vLLM's activation ops, are registered by ``bench_moe.py`` as Triton kernels of the same maths.
The output directory is git-ignored (``.gpu/``): it is carried to the GPU machine, never committed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

STUBS: dict[str, str] = {
    "vllm/__init__.py": "",
    "vllm/envs.py": '''
VLLM_BATCH_INVARIANT = False
VLLM_TUNED_CONFIG_FOLDER = None


def __getattr__(name):  # every other knob at its off / default value
    return None
''',
    "vllm/logger.py": '''
import logging


class _Logger(logging.LoggerAdapter):
    def info_once(self, msg, *args, **kwargs):
        kwargs.pop("scope", None)
        self.debug(msg, *args)

    warning_once = info_once
    debug_once = info_once


def init_logger(name):
    return _Logger(logging.getLogger(name), {})
''',
    "vllm/platforms/__init__.py": '''
import torch


class _CudaPlatform:
    def is_rocm(self):
        return False

    def is_cuda(self):
        return True

    def is_xpu(self):
        return False

    def is_cuda_alike(self):
        return True

    def is_device_capability(self, capability):
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor == (capability if isinstance(capability, int) else capability[0] * 10 + capability[1])

    def has_device_capability(self, capability):
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor >= (capability if isinstance(capability, int) else capability[0] * 10 + capability[1])

    def get_device_name(self, device_id=0):
        return torch.cuda.get_device_name(device_id)

    def fp8_dtype(self):
        return torch.float8_e4m3fn

    def __getattr__(self, name):
        return lambda *args, **kwargs: False


current_platform = _CudaPlatform()
''',
    "vllm/triton_utils/__init__.py": "import triton\nimport triton.language as tl\n",
    "vllm/triton_utils/allocation.py": "def set_triton_allocator(*args, **kwargs):\n    return None\n",
    "vllm/utils/__init__.py": "",
    "vllm/utils/platform_utils.py": '''
import re


def get_device_name_as_file_name(device_id: int = 0) -> str:
    from vllm.platforms import current_platform

    return re.sub(r"[\\s/]+", "_", current_platform.get_device_name(device_id))
''',
    "vllm/utils/torch_utils.py": '''
def direct_register_custom_op(*args, **kwargs):  # bench_moe calls fused_experts_impl directly
    return None
''',
    "vllm/_custom_ops.py": '''
import torch


def moe_align_block_size(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids, num_tokens_post_pad,
                         expert_map=None, scatter_idx=None):
    torch.ops._moe_C.moe_align_block_size(topk_ids, num_experts, block_size, sorted_token_ids, experts_ids,
                                          num_tokens_post_pad, expert_map, scatter_idx)


def moe_sum(input, output, topk_ids=None, expert_map=None):
    torch.ops._moe_C.moe_sum(input, output, topk_ids, expert_map)
''',
    "vllm/model_executor/__init__.py": "",
    "vllm/model_executor/layers/__init__.py": "",
    "vllm/model_executor/layers/fused_moe/__init__.py": '''
def get_config():  # vLLM 0.33.0 fused_moe/__init__.py: the override_config() value, None outside it
    return None
''',
    "vllm/model_executor/layers/fused_moe/config.py": '''
import torch

FUSED_MOE_UNQUANTIZED_CONFIG = None


class FusedMoEQuantConfig:  # only named in annotations by the functions bench_moe calls
    pass


def _get_config_dtype_str(dtype, use_fp8_w8a8=False, use_fp8_w8a16=False, use_int8_w8a16=False,
                          use_int4_w4a16=False, ocp_mx_scheme=None):
    # vLLM 0.33.0 config.py _get_config_dtype_str, the branches fused_experts_impl reaches
    if use_fp8_w8a8:
        return "fp8_w8a8"
    if use_fp8_w8a16:
        return "fp8_w8a16"
    if use_int8_w8a16:
        return "int8_w8a16"
    if use_int4_w4a16:
        return "int4_w4a16"
    if ocp_mx_scheme is not None:
        return None
    if dtype == torch.float:
        return "float32"
    return None
''',
    "vllm/model_executor/layers/fused_moe/modular_kernel.py": '''
class FusedMoEExpertsModular:  # the one static helper fused_experts_impl calls
    @staticmethod
    def adjust_N_for_activation(N, activation):
        return N if not activation.is_gated else N // 2
''',
    "vllm/model_executor/layers/fused_moe/utils.py": '''
import torch

from vllm.platforms import current_platform


def enable_swap_ab(BLOCK_SIZE_M, BLOCK_SIZE_N):  # vLLM 0.33.0 fused_moe/utils.py
    return current_platform.is_device_capability(90) and BLOCK_SIZE_M < 64 and BLOCK_SIZE_N >= 64


def resolve_moe_use_td(*args, **kwargs):  # the TD gather path needs Blackwell
    return False


def warn_if_moe_use_td_ineffective(*args, **kwargs):
    return None


def moe_kernel_quantize_input(A, A_scale, quant_dtype, per_act_token_quant, block_shape=None, **kwargs):
    """FP8 dynamic activation quantization (vLLM: _C per-token-group / scaled_fp8_quant ops, not carried):
    the same recipes as moe-registry's Triton kernels."""
    if quant_dtype is None:
        return A, A_scale
    from moe_registry.backends.triton_fused_moe import ops

    if block_shape is not None:
        return ops.quant_fp8_groups(A.reshape(-1, A.shape[-1]), block_shape[1])
    if A_scale is not None:
        return (A.float() / A_scale).clamp(-448, 448).to(torch.float8_e4m3fn), A_scale
    return ops.quant_fp8_tensor(A)
''',
}

REAL = ("model_executor/layers/fused_moe/fused_moe.py", "model_executor/layers/fused_moe/moe_align_block_size.py",
        "model_executor/layers/fused_moe/activation.py", "utils/math_utils.py")


def build(src: Path, out: Path) -> Path:
    vllm_src = src / "vllm"
    if out.exists():
        shutil.rmtree(out)
    for rel, text in STUBS.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"))
    for rel in REAL:
        dst = out / "vllm" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(vllm_src / rel, dst)
    cfg_src = vllm_src / "model_executor/layers/fused_moe/configs"
    cfg_dst = out / "vllm/model_executor/layers/fused_moe/configs"
    cfg_dst.mkdir(parents=True, exist_ok=True)
    for f in cfg_src.glob("*NVIDIA_H200*.json"):
        shutil.copy2(f, cfg_dst / f.name)
    return out


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="/work/ref/vllm", help="unpacked vLLM 0.33.0 wheel (holds vllm/)")
    p.add_argument("--out", default=str(root / ".gpu" / "vllm_shim"))
    a = p.parse_args()
    print(build(Path(a.src), Path(a.out)))


if __name__ == "__main__":
    main()
