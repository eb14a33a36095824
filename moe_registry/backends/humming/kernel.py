"""The ``humming`` adapter: Humming's MoE GEMMs driven exactly as vLLM 0.33's ``HummingIndexedExperts``.

Build (vLLM ``quantization/utils/humming/moe.py`` ``_process_single_sublayer``, per sublayer w13 / w2):

1. our canonical weight -> the tensors of the Humming *source* schema that matches the checkpoint
   format (:func:`humming_source`, pure torch): NvFP4 -> ``ModeloptNvfp4WeightSchema`` (``weight``
   uint8 ``[E, N, K/2]``, ``weight_scale`` e4m3 ``[E, N, K/16]``, ``weight_scale_2`` = the dequant
   global scale ``1 / NvFp4Tensor.global_scale``), MXFP4 -> ``Mxfp4WeightSchema`` (``weight``,
   ``weight_scale`` e8m0 bytes), int4 -> ``HummingWeightSchema`` uint4 (``weight`` ``[E, N, K/8]``
   int32 = GPTQ ``qweight`` transposed, as ``GPTQWeightSchema._convert_humming`` does; ``weight_scale``
   ``[E, N, K/g]``; ``zero_point`` ``[E, N/8, K/g]`` int32, 8 zero points per word along N, low bits
   first, as ``humming.utils.weight.quantize_weight(pack=True)`` lays them out);
2. ``schema.convert_humming(tensors, shape_n_stacks=[I, I] (gated) or [N], shape_k_stacks=[K])``;
3. a 16-bit ``HummingInputSchema()`` (vLLM's default: ``VLLM_HUMMING_INPUT_QUANT_CONFIG`` unset);
4. ``prepare_and_transform_humming_tensors(pad_n_to_multiple=256, pad_k_to_multiple=128)``: Humming
   pads N and K itself; the GEMMs read and write the unpadded widths.
Tuning: ``get_heuristics_config(layer_config, use_f16_accum=False, use_batch_invariant=False,
gemm_type=INDEXED)`` (``HummingExpertsBase.init_humming_moe``); locks ``zeros(SMs * 8, int32)``
(``vllm/utils/humming.py`` ``create_humming_locks``).

Forward (``HummingIndexedExperts.apply`` / ``prepare_humming_moe_kwargs``): ``valid_shape_m = T * k``;
block size from the w13 tuning interval containing it (64 if none), ``moe_align_block_size``; a second
alignment when w2's interval has another block size; GEMM1 ``top_k=k`` into ``[T*k, N1]``; the
activation fused into Humming's ``process_input`` (``[T*k, N1] -> [T*k, I]``); GEMM2 ``top_k=1`` into
``[T*k, H]``; the top-k weighted sum (vLLM ``moe_fused_mul_sum``; here in float32 torch).

Differences from vLLM: the weighted top-k sum runs in float32 torch (vLLM: a fused kernel); the
alignment uses vLLM's ``_moe_C.moe_align_block_size`` when that library is loaded, else the pure-torch
equivalent (``moe_registry.backends.marlin.repack.moe_align_block_size_torch``, same contract); the
activation expressions are ours (written from ``moe_registry.execution.activations``), in the format
of vLLM's ``get_humming_activation``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from moe_registry.execution.base import Experts
from moe_registry.execution.declared import check_declared, device_spec_of
from moe_registry.execution.guards import check_forward_inputs, check_weights
from moe_registry.execution.weights import ExpertWeights
from moe_registry.formats.int4 import scales_in_dtype
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.layer import LayerSpec
from moe_registry.schemas.quant import QuantKind, quant_info

__all__ = ["HummingExperts", "HummingSource", "activation_kwargs", "humming_source", "load_humming",
           "pack_zero_points", "unpack_source_int4"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_PARAM_DTYPE_NAME = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
PAD_N, PAD_K = 256, 128  # vLLM _prepare_and_transform_sublayer: pad_n_to_multiple=256, pad_k_to_multiple=128
LOCKS_PER_SM = 8  # vllm/utils/humming.py create_humming_locks: num_compute_units * 8
DEFAULT_BLOCK = 64  # prepare_humming_moe_kwargs: "using default block_size=64"
INSTALL_HINT = ("pip install humming-kernels==0.1.19 (the moe-registry 'humming' extra; needs a CUDA torch and "
                "cuda-bindings)")


def load_humming() -> Any:
    """Import Humming or raise ``RuntimeError`` with the install hint."""
    try:
        import humming  # noqa: F401
        import humming.forward
        import humming.schema
        import humming.transform
        import humming.tune
    except ImportError as exc:
        raise RuntimeError(f"humming: the package humming-kernels is not importable ({exc}); {INSTALL_HINT}") from None
    return humming


# --- Weight conversion (pure torch) -------------------------------------------------------------


@dataclass(frozen=True)
class HummingSource:
    """One sublayer's weights in a Humming source schema: ``config`` is what
    ``humming.schema.BaseWeightSchema.from_config`` takes, ``tensors`` what its ``convert_humming`` reads."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def pack_zero_points(zeros: torch.Tensor) -> torch.Tensor:
    """Integer zero points ``[..., G, N]`` (GPTQ orientation) -> Humming's ``[..., N/8, G]`` int32:
    8 consecutive output channels per word, channel ``8i + j`` in bits ``4j..4j+3``."""
    z = zeros.to(torch.int64).transpose(-1, -2)  # [..., N, G]
    n = z.shape[-2]
    if n % 8:
        raise ValueError(f"humming: zero points pack 8 output channels per int32; N={n} is not a multiple of 8")
    z = z.reshape(*z.shape[:-2], n // 8, 8, z.shape[-1])
    shifts = (4 * torch.arange(8, dtype=torch.int64, device=z.device)).view(8, 1)
    words = ((z & 0xF) << shifts).sum(dim=-2)
    return _as_int32(words)


def _as_int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 bit patterns held in int64 -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_words(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words of 8 nibbles (low first) -> int64 codes, expanded along ``dim``."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    w = w.movedim(dim, -1)
    shifts = 4 * torch.arange(8, dtype=torch.int64, device=w.device)
    codes = (w.unsqueeze(-1) >> shifts) & 0xF
    codes = codes.reshape(*w.shape[:-1], w.shape[-1] * 8)
    return codes.movedim(-1, dim)


def unpack_source_int4(source: HummingSource) -> torch.Tensor:
    """Dequantize an int4 ``HummingSource`` the way Humming defines its uint4 schema
    (``humming/utils/weight.py`` ``dequantize_weight``: ``(q - zero_point) * scale``, zero point 8
    when there is none): float32 ``[E, N, K]``. For the CPU round-trip tests."""
    t = source.tensors
    q = _unpack_words(t["weight"], -1).float()  # [E, N, K]
    if "zero_point" in t:
        zp = _unpack_words(t["zero_point"], -2).float()  # [E, N, G]
    else:
        zp = torch.full((*q.shape[:-1], 1), 8.0)
    scale = t["weight_scale"].float()  # [E, N, G]
    K, G = q.shape[-1], scale.shape[-1]
    return (q - zp.repeat_interleave(K // zp.shape[-1], -1)) * scale.repeat_interleave(K // G, -1)


def humming_source(w: Any, kind: QuantKind, dtype: torch.dtype, bias: torch.Tensor | None = None) -> HummingSource:
    """Canonical quantized weight (logical ``[E, N, K]``) -> the Humming source schema and tensors."""
    tensors: dict[str, torch.Tensor]
    if kind in (QuantKind.NVFP4, QuantKind.NVFP4_W4A16):
        _need(w, ("data", "scale", "global_scale"), kind)
        # ModelOpt's weight_scale_2 is the dequant global scale; NvFp4Tensor keeps the encode scale.
        gs = w.global_scale.to(torch.float32)
        tensors = {"weight": w.data.contiguous(), "weight_scale": w.scale.contiguous(),
                   "weight_scale_2": (1.0 / gs).reshape(gs.shape[0] if gs.dim() else 1).contiguous()}
        config: dict[str, Any] = {"quant_method": "modelopt", "quant_algo": "nvfp4"}
    elif kind is QuantKind.MXFP4:
        _need(w, ("data", "scale"), kind)
        tensors = {"weight": w.data.contiguous(), "weight_scale": w.scale.contiguous()}
        config = {"quant_method": "mxfp4"}
    elif kind is QuantKind.INT4_W4A16:
        _need(w, ("qweight", "scales", "group_size"), kind)
        K = w.qweight.shape[-2] * 8
        g = int(w.group_size)
        g_idx = getattr(w, "g_idx", None)
        if g_idx is not None:
            trivial = torch.arange(K, device=g_idx.device) // (K if g == -1 else g)
            if not torch.equal(g_idx.to(torch.int64), trivial.expand(g_idx.shape)):
                raise ValueError("humming: GPTQ act-order (a permuted g_idx) is not supported "
                                 "(humming GPTQWeightSchema.to_humming_schema asserts not desc_act)")
        scales = scales_in_dtype(w.scales, dtype, backend="humming",
                                 why="Humming's 16-bit weight scales must match the activation dtype")
        tensors = {"weight": w.qweight.transpose(-1, -2).contiguous(),
                   "weight_scale": scales.transpose(-1, -2).contiguous()}
        has_zp = w.zeros is not None and not bool((w.zeros == 8).all())
        if has_zp:
            tensors["zero_point"] = pack_zero_points(w.zeros)
        config = {"quant_method": "humming", "b_dtype": "uint4", "bs_dtype": _PARAM_DTYPE_NAME[dtype],
                  "weight_scale_group_size": 0 if g == -1 else g, "has_zero_point": has_zp}
    else:
        raise ValueError(f"humming adapter converts int4_w4a16, nvfp4 / nvfp4_w4a16 and mxfp4 weights; "
                         f"{kind.value} is not implemented here")
    if bias is not None:
        tensors["bias"] = bias.to(dtype).contiguous()
    return HummingSource(config=config, tensors=tensors)


def _need(w: Any, fields: tuple[str, ...], kind: QuantKind) -> None:
    if not all(hasattr(w, f) for f in fields):
        raise ValueError(f"humming: {kind.value} weights must be a {quant_info(kind).format_class}, "
                         f"got {type(w).__name__}")


# --- Activation expressions ------------------------------------------------------------------------


def _f(x: float) -> str:
    return f"({float(x)!r}f)"


_SILU = "a / (1.f + expf(-a))"
_GELU = "0.5f * a * (1.f + erff(a * 0.7071067811865476f))"
_GELU_TANH = "0.5f * a * (1.f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)))"
_RELU2 = "fmaxf(a, 0.f) * fmaxf(a, 0.f)"


def activation_kwargs(layer: LayerSpec) -> dict[str, str]:
    """``activation_type`` / ``activation_impl`` for ``humming.forward.may_process_input``: a float
    expression in ``a`` (gate or the single input) and ``b`` (up), computed in fp32 by the kernel.
    The same maths as ``moe_registry.execution.activations``."""
    act = layer.activation
    if act is Activation.SWIGLUOAI:
        p = layer.swigluoai
        assert p is not None
        gate = "a" if p.limit is None else f"fminf(a, {_f(p.limit)})"
        up = "b" if p.limit is None else f"fmaxf(fminf(b, {_f(p.limit)}), -{_f(p.limit)})"
        impl = (f"[](float a, float b) {{ const float g = {gate}; const float u = {up}; "
                f"return (u + {_f(p.up_offset)}) * (g / (1.f + expf(-{_f(p.alpha)} * g))); }}(a, b)")
        return {"activation_type": "binary_interleaved" if p.interleaved else "binary_split", "activation_impl": impl}
    gated = {Activation.SILU: _SILU, Activation.GELU: _GELU, Activation.GELU_TANH: _GELU_TANH}
    unary = {Activation.SILU_NO_MUL: _SILU, Activation.GELU_NO_MUL: _GELU, Activation.GELU_TANH_NO_MUL: _GELU_TANH,
             Activation.RELU2_NO_MUL: _RELU2}
    if act in gated:
        return {"activation_type": "binary_split", "activation_impl": f"({gated[act]}) * b"}
    if act in unary:
        return {"activation_type": "unary", "activation_impl": unary[act]}
    raise ValueError(f"humming: no fused expression for activation {act.value!r}")


# --- The adapter -----------------------------------------------------------------------------------


class _Sublayer:
    """One GEMM's transformed tensors, LayerConfig and tuning intervals."""

    def __init__(self, config: Any, tensors: dict[str, torch.Tensor], tuning: list, out_width: int) -> None:
        self.config, self.tensors, self.tuning = config, tensors, tuning
        self.tuning_str = json.dumps(tuning)
        self.out_width = out_width

    def block_size(self, shape_m: int) -> int:
        for lower, upper, cfg in self.tuning:
            if lower < shape_m <= upper:
                return int(cfg["block_shape"][0])
        return DEFAULT_BLOCK


class HummingExperts(Experts):
    """Humming MoE on int4 / NvFP4 / MXFP4 weights with 16-bit activations; see the module docstring.
    Build: declared guards (``ValueError``), Humming importable (``RuntimeError``), convert + transform
    once. Forward: guards, align, GEMM1, fused activation, GEMM2, weighted sum. ``build_seconds`` and
    ``first_forward_seconds`` (JIT compile included) are recorded for the notes of ``run`` / ``bench``."""

    backend = "humming"

    def __init__(self, layer: LayerSpec, weights: ExpertWeights, *, pad_hidden_to: int | None = None,
                 pad_intermediate_to: int | None = None) -> None:
        super().__init__(layer, weights, pad_hidden_to=pad_hidden_to, pad_intermediate_to=pad_intermediate_to)
        if self.hidden_padded != layer.hidden_size or self.intermediate_padded != layer.local_intermediate_size:
            raise ValueError("humming: pads N and K itself (pad_n_to_multiple=256, pad_k_to_multiple=128); "
                             "pad_hidden_to / pad_intermediate_to are not taken")
        t0 = time.perf_counter()
        check_weights(layer, weights)
        device = weights.device
        if device.type == "cpu" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type != "cuda":
            raise RuntimeError("humming: needs a CUDA device (Humming's kernels are NVRTC-compiled CUDA)")
        check_declared(self.backend, layer, device_spec_of(device), hidden_padded=layer.hidden_size,
                       intermediate_padded=layer.local_intermediate_size)
        hm = load_humming()
        self.device, self.dtype = device, _DTYPES[layer.dtype]
        self.num_experts = layer.local_num_experts
        self.activation = activation_kwargs(layer)
        self.align = _aligner()
        w = weights.to(device)
        H, I, E = layer.hidden_size, layer.local_intermediate_size, layer.local_num_experts
        n13 = layer.gemm1_rows
        stacks13 = [I, I] if layer.activation.is_gated else [I]
        with torch.cuda.device(device):
            self.w13 = self._sublayer(hm, w.w13, w.w13_bias, n13, H, stacks13, E)
            self.w2 = self._sublayer(hm, w.w2, w.w2_bias, H, I, [H], E)
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            self.locks = torch.zeros(sms * LOCKS_PER_SM, dtype=torch.int32, device=device)
        self.compute_config = json.dumps({"use_batch_invariant": False, "use_f16_accum": False, "gemm_type": "indexed"})
        self._forward = hm.forward.humming_forward
        self._process = hm.forward.may_process_input
        self.build_seconds = time.perf_counter() - t0
        self.first_forward_seconds: float | None = None

    def _sublayer(self, hm: Any, w: Any, bias: torch.Tensor | None, shape_n: int, shape_k: int,
                  stacks_n: list[int], E: int) -> _Sublayer:
        from humming.config import GemmType
        from humming.schema import BaseWeightSchema, HummingInputSchema

        source = humming_source(w, self.layer.quant.kind, self.dtype, bias)
        schema = BaseWeightSchema.from_config(source.config)
        wschema, tensors = schema.convert_humming(tensors=dict(source.tensors), shape_n_stacks=stacks_n,
                                                  shape_k_stacks=[shape_k], param_dtype=self.dtype, num_experts=E,
                                                  device=self.device)
        config, tensors = hm.transform.prepare_and_transform_humming_tensors(
            tensors=tensors, shape_n=shape_n, shape_k=shape_k, pad_n_to_multiple=PAD_N, pad_k_to_multiple=PAD_K,
            input_schema=HummingInputSchema(), weight_schema=wschema, has_bias=bias is not None, num_experts=E,
            torch_dtype=self.dtype, device=self.device)
        tuning = hm.tune.get_heuristics_config(layer_config=config, use_f16_accum=False, use_batch_invariant=False,
                                               gemm_type=GemmType.INDEXED, device=self.device)
        return _Sublayer(config, tensors, tuning, shape_n)

    def _gemm(self, sub: _Sublayer, x: torch.Tensor, out: torch.Tensor, align: tuple, *, top_k: int,
              shape_m: int) -> torch.Tensor:
        t = sub.tensors
        sorted_ids, expert_ids, ntp = align
        return self._forward(sub.config, inputs=x, weight=t["weight"], weight_scale=t.get("weight_scale"),
                             zero_point=t.get("zero_point"), bias=t.get("bias"), weight_scale_2=t.get("weight_scale_2"),
                             outputs=out, locks=self.locks, sorted_ids=sorted_ids, expert_ids=expert_ids,
                             num_tokens_padded=ntp, top_k=top_k, valid_shape_m=shape_m,
                             compute_config=self.compute_config, tuning_config=sub.tuning_str)

    def forward(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        check_forward_inputs(self.layer, hidden_states, topk_weights, topk_ids, device=self.device, dtype=self.dtype)
        T, k = topk_ids.shape
        H, I = self.layer.hidden_size, self.layer.local_intermediate_size
        if T == 0:
            return torch.empty((0, H), dtype=self.dtype, device=hidden_states.device)
        first = self.first_forward_seconds is None
        t0 = time.perf_counter()
        M = T * k
        ids = topk_ids.to(torch.int32).contiguous()
        b1, b2 = self.w13.block_size(M), self.w2.block_size(M)
        align1 = self.align(ids, self.num_experts, b1)
        align2 = align1 if b2 == b1 else self.align(ids, self.num_experts, b2)
        x = hidden_states.contiguous()
        h = torch.empty((M, self.w13.out_width), dtype=self.dtype, device=x.device)
        self._gemm(self.w13, x, h, align1, top_k=k, shape_m=M)
        a = torch.empty((M, I), dtype=self.dtype, device=x.device)
        a, _, _ = self._process(self.w2.config, inputs=h, outputs=a, layout="normal", **self.activation)
        y = torch.empty((M, H), dtype=self.dtype, device=x.device)
        self._gemm(self.w2, a, y, align2, top_k=1, shape_m=M)
        out = (y.view(T, k, H).float() * topk_weights.unsqueeze(-1)).sum(dim=1).to(self.dtype)
        if first and not torch.cuda.is_current_stream_capturing():  # a sync would end a capture
            torch.cuda.synchronize(x.device)
            self.first_forward_seconds = time.perf_counter() - t0
        return out


def _aligner():
    """vLLM's ``moe_align_block_size`` from ``_moe_C`` when loadable, else the pure-torch one."""
    from moe_registry.backends.marlin import ops, repack

    try:
        ops.load_moe_c()
    except (OSError, RuntimeError):
        pass
    if not ops.align_op_available():
        return repack.moe_align_block_size_torch

    def align(ids: torch.Tensor, E: int, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        max_padded, num_blocks = repack.align_buffer_sizes(ids.numel(), E, block)
        sorted_ids = torch.empty((max_padded,), dtype=torch.int32, device=ids.device)
        expert_ids = torch.empty((num_blocks,), dtype=torch.int32, device=ids.device)
        ntp = torch.empty((1,), dtype=torch.int32, device=ids.device)
        ops.moe_align_block_size(ids, E, block, sorted_ids, expert_ids, ntp)
        return sorted_ids, expert_ids, ntp

    return align
