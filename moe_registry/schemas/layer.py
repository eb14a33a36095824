"""The question selection answers: one MoE layer (problem) under one parallel layout (deployment).

Split as in TensorRT-LLM's moe_resolution.py (MoEProblem / MoEDeployment). Fields that may be
unknown (routing, activation-scale layout) stay ``None``; rules that need them abstain.
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .activation import Activation, SiluClampParams, SwigluOAIParams
from .quant import QuantScheme

# Bounds far above any real model (DeepSeek-V3: 256 experts, H 7168, 61 layers; Qwen3-Next: 512
# experts), so an absurd input is a one-line validation error instead of minutes of work.
MAX_EXPERTS = 65_536
MAX_DIMENSION = 2**20  # hidden and intermediate size
MAX_PARALLEL = 65_536  # tp, ep, dp
MAX_LAYERS = 256  # num_hidden_layers (the planner's bound; layer indices stay below it)


class ParallelConfig(BaseModel):
    """Tensor parallelism splits every expert's intermediate size; expert parallelism splits the
    experts. ``dp`` (data-parallel attention) does not change the expert shapes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tp: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    ep: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    dp: int = Field(default=1, ge=1, le=MAX_PARALLEL)

    def label(self) -> str:
        parts = [f"TP{self.tp}"] if self.tp > 1 else []
        parts += [f"EP{self.ep}"] if self.ep > 1 else []
        parts += [f"DP{self.dp}"] if self.dp > 1 else []
        return "+".join(parts) or "single GPU"


class RoutingMethod(str, Enum):
    """How tokens pick experts. Names follow FlashInfer's RoutingMethodType (tllm_enums.py)."""

    SOFTMAX_TOPK = "softmax_topk"  # Default: softmax over all, top-k (Mixtral without renorm)
    TOPK_SOFTMAX = "topk_softmax"  # Renormalize: top-k logits, softmax over the k (gpt-oss)
    SOFTMAX_TOPK_RENORM = "softmax_topk_renorm"  # RenormalizeNaive: softmax, top-k, renormalise (Qwen3, Mixtral)
    DEEPSEEK_V3 = "deepseek_v3"  # sigmoid + correction bias, group-limited, scaled (DeepSeek, Kimi, GLM, Nemotron-H)
    LLAMA4 = "llama4"  # top-1 logit then sigmoid, weight applied on the input
    SIGMOID_RENORM = "sigmoid_renorm"
    SIGMOID = "sigmoid"
    MINIMAX2 = "minimax2"
    CUSTOM = "custom"  # anything no kernel routes in-kernel (Gemma 4's scaled router)


DType = Literal["bf16", "fp16", "fp32"]


class LayerSpec(BaseModel):
    """One MoE experts layer, with full (unsharded) sizes; per-rank sizes are derived."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    index: int | None = Field(default=None, ge=0, lt=MAX_LAYERS)
    num_experts: int = Field(gt=0, le=MAX_EXPERTS)
    top_k: int = Field(gt=0)
    hidden_size: int = Field(gt=0, le=MAX_DIMENSION)
    intermediate_size: int = Field(gt=0, le=MAX_DIMENSION, description="per-expert FFN width before TP sharding")
    activation: Activation = Activation.SILU
    # swigluoai: SwigluOAIParams (optional, gpt-oss constants by default); silu_clamp: SiluClampParams (required)
    activation_params: SwigluOAIParams | SiluClampParams | None = None
    quant: QuantScheme = QuantScheme()
    dtype: DType = Field(default="bf16", description="dtype of hidden states entering and leaving the layer")
    routing: RoutingMethod | None = None
    bias: bool = False
    apply_router_weight_on_input: bool = False
    parallel: ParallelConfig = ParallelConfig()
    # The model's attention heads (from its config, when known): a TP size must divide them, so
    # hints offer only such sizes. They do not change what the experts compute.
    attention_heads: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)

    @field_validator("activation", mode="before")
    @classmethod
    def _parse_activation(cls, value: object) -> object:
        return Activation.parse(value) if isinstance(value, str) else value

    @field_validator("quant", mode="before")
    @classmethod
    def _parse_quant(cls, value: object) -> object:
        return QuantScheme.parse(value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _params_for_activation(cls, data: object) -> object:
        # Both parameter models accept {"limit": x}: the activation decides which one a dict is.
        if isinstance(data, dict) and isinstance(data.get("activation_params"), dict):
            act = data.get("activation")
            name = act.value if isinstance(act, Activation) else str(act).strip().lower()
            model = SiluClampParams if name == Activation.SILU_CLAMP.value else SwigluOAIParams
            data = {**data, "activation_params": model(**data["activation_params"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> "LayerSpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.intermediate_size % self.parallel.tp:
            raise ValueError(f"TP{self.parallel.tp} does not divide intermediate_size {self.intermediate_size}")
        if self.num_experts % self.parallel.ep:
            raise ValueError(f"EP{self.parallel.ep} does not divide num_experts {self.num_experts}")
        params = self.activation_params
        if self.activation is Activation.SILU_CLAMP:
            if not isinstance(params, SiluClampParams):
                raise ValueError("silu_clamp needs activation_params with its limit (the config's swiglu_limit)")
        elif params is not None and (self.activation is not Activation.SWIGLUOAI
                                     or not isinstance(params, SwigluOAIParams)):
            raise ValueError("activation_params apply to the swigluoai activation only (and silu_clamp, which needs a limit)")
        return self

    # --- Derived per-rank sizes ------------------------------------------------------------------

    @property
    def local_intermediate_size(self) -> int:
        return self.intermediate_size // self.parallel.tp

    @property
    def local_num_experts(self) -> int:
        return self.num_experts // self.parallel.ep

    @property
    def gemm1_rows(self) -> int:
        """Rows of the per-rank GEMM1 weight: 2*I for gated activations, I otherwise."""
        return self.local_intermediate_size * (2 if self.activation.is_gated else 1)

    @property
    def swigluoai(self) -> SwigluOAIParams | None:
        if self.activation is not Activation.SWIGLUOAI:
            return None
        params = self.activation_params
        return params if isinstance(params, SwigluOAIParams) else SwigluOAIParams()

    @property
    def silu_clamp_limit(self) -> float | None:
        params = self.activation_params
        return params.limit if self.activation is Activation.SILU_CLAMP and isinstance(params, SiluClampParams) else None

    def expert_weight_bytes(self, hidden: int | None = None, intermediate: int | None = None,
                            held_bits: int | None = None) -> int:
        """Bytes of this layer's expert weights on one rank: ``local_num_experts`` x (w13 + w2 +
        biases) at the per-rank ``hidden`` / ``intermediate`` the kernel sees (default: unpadded), in
        the checkpoint's format (``QuantScheme.matrix_bytes``) or, with ``held_bits``, expanded to
        that many bits with no scales (a backend that dequantizes at load). Biases in the layer dtype."""
        h = self.hidden_size if hidden is None else hidden
        i = self.local_intermediate_size if intermediate is None else intermediate
        rows = i * (2 if self.activation.is_gated else 1)
        if held_bits is None:
            matrices = self.quant.matrix_bytes(rows, h) + self.quant.matrix_bytes(h, i)
        else:
            matrices = (rows * h + h * i) * held_bits // 8
        bias = (rows + h) * (4 if self.dtype == "fp32" else 2) if self.bias else 0
        return self.local_num_experts * (matrices + bias)

    def replace(self, **changes: object) -> "LayerSpec":
        """A validated copy with some fields changed (``model_copy(update=...)`` skips validation)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def runnable_tp(self, tp: int) -> bool:
        """Whether an attention TP size is runnable for this model: it divides the attention heads, and
        divides the KV heads or is a multiple of them (KV heads replicated), as vLLM requires
        (config/model.py verify_with_parallel_config; QKVParallelLinear). True when heads are unknown."""
        if self.attention_heads is not None and self.attention_heads % tp:
            return False
        return self.kv_heads is None or self.kv_heads % tp == 0 or tp % self.kv_heads == 0

    def shape_key(self) -> "LayerSpec":
        """The same layer without its name and index: what selection depends on."""
        if self.name is None and self.index is None:
            return self
        return self.model_copy(update={"name": None, "index": None})

    def describe(self) -> str:
        return (f"E={self.num_experts} top{self.top_k} H={self.hidden_size} I={self.intermediate_size} "
                f"{self.activation.value} {self.quant.label()} {self.dtype} {self.parallel.label()}")
