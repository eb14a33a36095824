"""vLLM's ``_moe_C`` custom ops: finding / loading them, and calling them by schema argument name.

The Marlin MoE kernel is ``torch.ops._moe_C.moe_wna16_marlin_gemm``; importing ``vllm`` registers
it (``vllm/_custom_ops.py`` -> ``current_platform.import_kernels()``). On a machine without a vLLM
install, the library itself (``vllm/_moe_C_stable_libtorch.abi3.so`` from the wheel) can be loaded
with ``torch.ops.load_library``: point ``MOE_REGISTRY_VLLM_MOE_C`` at it, or call
``load_moe_c(path)``.

The op is called positionally in the order of its *registered schema*, with each value looked up
by argument name. The expected vLLM 0.33.0 schema (``strings`` of the .so) is::

    moe_wna16_marlin_gemm(Tensor! a, Tensor? c_or_none, Tensor! b_q_weight,
        Tensor? b_bias_or_none, Tensor! b_scales, Tensor? a_scales, Tensor? global_scale,
        Tensor? b_zeros_or_none, Tensor! workspace, Tensor sorted_token_ids, Tensor! expert_ids,
        Tensor! num_tokens_past_padded, Tensor! topk_weights, int moe_block_size, int top_k,
        bool mul_topk_weights, int b_type_id, int size_m, int size_n, int size_k,
        bool use_atomic_add, bool use_fp32_reduce, bool is_zp_float, int thread_k, int thread_n,
        int blocks_per_sm) -> Tensor

Older builds (with ``g_idx_or_none``, ``perm_or_none``, ``is_ep``, ``is_k_full``) get ``None``,
``None``, ``False``, ``True``: no act-order, no expert map, full K, which is what this adapter
runs. An argument this module cannot fill raises ``RuntimeError`` naming the schema.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import torch

OP_NAMESPACE = "_moe_C"  # tests point this at a namespace of their own
ENV_VAR = "MOE_REGISTRY_VLLM_MOE_C"
MISSING_MESSAGE = "vLLM's _moe_C ops not found (pip install vllm)"

EXPECTED_GEMM_ARGS = (
    "a", "c_or_none", "b_q_weight", "b_bias_or_none", "b_scales", "a_scales", "global_scale",
    "b_zeros_or_none", "workspace", "sorted_token_ids", "expert_ids", "num_tokens_past_padded",
    "topk_weights", "moe_block_size", "top_k", "mul_topk_weights", "b_type_id", "size_m", "size_n",
    "size_k", "use_atomic_add", "use_fp32_reduce", "is_zp_float", "thread_k", "thread_n",
    "blocks_per_sm",
)
EXPECTED_ALIGN_ARGS = (
    "topk_ids", "num_experts", "block_size", "sorted_token_ids", "experts_ids",
    "num_tokens_post_pad", "maybe_expert_map", "scatter_idx",
)

# Names other vLLM releases used for the same arguments, and values for arguments this adapter
# always sets the same way.
_GEMM_ALIASES = {
    "input": "a", "output": "c_or_none", "c": "c_or_none", "b_qweight": "b_q_weight",
    "b_bias": "b_bias_or_none", "a_scales_or_none": "a_scales", "global_scale_or_none": "global_scale",
    "b_zeros": "b_zeros_or_none", "b_qzeros": "b_zeros_or_none",
    "num_tokens_post_padded": "num_tokens_past_padded", "b_q_type": "b_type_id", "b_q_type_id": "b_type_id",
}
_GEMM_FIXED = {"g_idx_or_none": None, "perm_or_none": None, "g_idx": None, "perm": None,
               "is_ep": False, "is_k_full": True}
_ALIGN_ALIASES = {"expert_ids": "experts_ids", "num_tokens_post_padded": "num_tokens_post_pad",
                  "expert_map": "maybe_expert_map"}


def _namespace() -> Any:
    return getattr(torch.ops, OP_NAMESPACE)


def _has_op(name: str) -> bool:
    try:
        return hasattr(_namespace(), name)
    except (AttributeError, RuntimeError):
        return False


def marlin_op_available() -> bool:
    """True iff ``torch.ops._moe_C.moe_wna16_marlin_gemm`` is registered (no import side effects)."""
    return _has_op("moe_wna16_marlin_gemm")


def align_op_available() -> bool:
    """True iff ``torch.ops._moe_C.moe_align_block_size`` is registered."""
    return _has_op("moe_align_block_size")


def load_moe_c(path: str | os.PathLike[str] | None = None) -> bool:
    """Load vLLM's ``_moe_C`` library from ``path`` (or ``$MOE_REGISTRY_VLLM_MOE_C``) with
    ``torch.ops.load_library``; returns ``marlin_op_available()``.

    Does nothing when the op is already registered (loading the same library twice would collide)
    or when neither a path nor the variable is given. A path that does not exist raises
    ``FileNotFoundError``; a library that fails to load raises ``RuntimeError`` with the loader's
    message (typically a torch / CUDA ABI mismatch).
    """
    if marlin_op_available():
        return True
    path = path if path is not None else os.environ.get(ENV_VAR)
    if not path:
        return False
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vLLM _moe_C library not found at {path!r} "
                                f"(expected vllm/_moe_C_stable_libtorch.abi3.so from the vLLM wheel)")
    try:
        torch.ops.load_library(path)
    except Exception as exc:  # OSError (undefined symbol, missing libcudart) or RuntimeError
        raise RuntimeError(f"loading vLLM _moe_C from {path!r} failed under torch {torch.__version__}: "
                           f"{type(exc).__name__}: {exc}") from exc
    return marlin_op_available()


def ensure_marlin_op() -> None:
    """Make ``moe_wna16_marlin_gemm`` available or raise ``RuntimeError(MISSING_MESSAGE ...)``.

    Tries, in order: already registered; ``$MOE_REGISTRY_VLLM_MOE_C``; importing
    ``vllm._custom_ops`` when vLLM is installed (that import loads vLLM's kernels).
    """
    if marlin_op_available():
        return
    notes: list[str] = []
    if os.environ.get(ENV_VAR):
        try:
            if load_moe_c():
                return
            notes.append(f"${ENV_VAR}={os.environ[ENV_VAR]} loaded, but it registers no "
                         f"{OP_NAMESPACE}::moe_wna16_marlin_gemm")
        except (FileNotFoundError, RuntimeError) as exc:
            notes.append(str(exc))
    elif OP_NAMESPACE == "_moe_C" and importlib.util.find_spec("vllm") is not None:
        try:
            importlib.import_module("vllm._custom_ops")
            if marlin_op_available():
                return
            notes.append("vllm is installed, but importing vllm._custom_ops registered no "
                         "_moe_C::moe_wna16_marlin_gemm")
        except Exception as exc:  # a broken vLLM install must not mask the message
            notes.append(f"importing vllm._custom_ops failed: {type(exc).__name__}: {exc}")
    else:
        notes.append(f"or set {ENV_VAR} to vllm/_moe_C_stable_libtorch.abi3.so from the vLLM wheel")
    raise RuntimeError(MISSING_MESSAGE + ("; " + "; ".join(notes) if notes else ""))


def probe() -> tuple[bool, str]:
    """A ``Requirement(kind="probe", probe="moe_registry.backends.marlin.ops:probe")`` entry point:
    ``(available, detail)``. Unlike the ``torch_op`` check it also loads
    ``$MOE_REGISTRY_VLLM_MOE_C`` (and imports torch, and vLLM when installed)."""
    try:
        ensure_marlin_op()
    except RuntimeError as exc:
        return False, str(exc)
    return True, f"torch.ops.{OP_NAMESPACE}.moe_wna16_marlin_gemm registered"


def _schema(op_name: str) -> Any:
    packet = getattr(_namespace(), op_name)
    return packet.default._schema


def schema_string(op_name: str = "moe_wna16_marlin_gemm") -> str:
    """The registered schema of an op of the namespace (for diagnostics)."""
    return str(_schema(op_name))


def _call_by_schema(op_name: str, values: dict[str, Any], aliases: dict[str, str],
                    fixed: dict[str, Any]) -> Any:
    schema = _schema(op_name)
    args: list[Any] = []
    for arg in schema.arguments:
        name = arg.name
        key = name if name in values else aliases.get(name)
        if key is not None and key in values:
            args.append(values[key])
        elif name in fixed:
            args.append(fixed[name])
        elif arg.has_default_value():
            args.append(arg.default_value)
        elif isinstance(arg.type, torch._C.OptionalType):
            args.append(None)
        else:
            raise RuntimeError(f"{OP_NAMESPACE}::{op_name}: cannot fill argument {name!r} of the "
                               f"registered schema {schema}; this adapter targets vLLM 0.33.0")
    return getattr(_namespace(), op_name)(*args)


def moe_wna16_marlin_gemm(**values: Any) -> torch.Tensor:
    """Call the Marlin MoE GEMM with keyword values named as in the vLLM 0.33.0 schema
    (``EXPECTED_GEMM_ARGS``); returns ``c`` ``[size_m * top_k, size_n]``."""
    unknown = set(values) - set(EXPECTED_GEMM_ARGS)
    if unknown:
        raise TypeError(f"unknown moe_wna16_marlin_gemm arguments: {sorted(unknown)}")
    return _call_by_schema("moe_wna16_marlin_gemm", values, _GEMM_ALIASES, _GEMM_FIXED)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int,
                         sorted_token_ids: torch.Tensor, experts_ids: torch.Tensor,
                         num_tokens_post_pad: torch.Tensor) -> None:
    """The CUDA ``moe_align_block_size`` (in place, no expert map, no scatter index)."""
    values = dict(topk_ids=topk_ids, num_experts=num_experts, block_size=block_size,
                  sorted_token_ids=sorted_token_ids, experts_ids=experts_ids,
                  num_tokens_post_pad=num_tokens_post_pad, maybe_expert_map=None, scatter_idx=None)
    _call_by_schema("moe_align_block_size", values, _ALIGN_ALIASES, {})
