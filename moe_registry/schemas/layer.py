"""The question selection answers: one MoE layer (problem) under one parallel layout (deployment).

Split as in TensorRT-LLM's moe_resolution.py (MoEProblem / MoEDeployment). Fields that may be
unknown (routing, activation-scale layout) stay ``None``; rules that need them abstain.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .activation import Activation, SwigluOAIParams
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
    activation_params: SwigluOAIParams | None = None
    quant: QuantScheme = QuantScheme()
    dtype: DType = Field(default="bf16", description="dtype of hidden states entering and leaving the layer")
    routing: RoutingMethod | None = None
    bias: bool = False
    apply_router_weight_on_input: bool = False
    parallel: ParallelConfig = ParallelConfig()

    @field_validator("activation", mode="before")
    @classmethod
    def _parse_activation(cls, value: object) -> object:
        return Activation.parse(value) if isinstance(value, str) else value

    @field_validator("quant", mode="before")
    @classmethod
    def _parse_quant(cls, value: object) -> object:
        return QuantScheme.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> "LayerSpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.intermediate_size % self.parallel.tp:
            raise ValueError(f"TP{self.parallel.tp} does not divide intermediate_size {self.intermediate_size}")
        if self.num_experts % self.parallel.ep:
            raise ValueError(f"EP{self.parallel.ep} does not divide num_experts {self.num_experts}")
        if self.activation_params is not None and self.activation is not Activation.SWIGLUOAI:
            raise ValueError("activation_params apply to the swigluoai activation only")
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
        return self.activation_params or SwigluOAIParams()

    def replace(self, **changes: object) -> "LayerSpec":
        """A validated copy with some fields changed (``model_copy(update=...)`` skips validation)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def shape_key(self) -> "LayerSpec":
        """The same layer without its name and index: what selection depends on."""
        if self.name is None and self.index is None:
            return self
        return self.model_copy(update={"name": None, "index": None})

    def describe(self) -> str:
        return (f"E={self.num_experts} top{self.top_k} H={self.hidden_size} I={self.intermediate_size} "
                f"{self.activation.value} {self.quant.label()} {self.dtype} {self.parallel.label()}")
