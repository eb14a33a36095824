"""Expert activations: stable ids, gating, Hugging Face aliases and gpt-oss constants.

An activation id names one mathematical function. Two functions that differ (exact-erf GELU and
its tanh approximation) get two ids, so a backend that computes one for the other has to say so
in its declaration (``ActivationImpl.fidelity = "approximate"``) instead of claiming support.
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

import math
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Activation(str, Enum):
    """The activation applied between the two expert GEMMs.

    Gated ids compute ``act(gate) * up`` on GEMM1's ``[gate; up]`` output of width ``2*I``;
    ``*_no_mul`` ids apply ``act`` to a GEMM1 output of width ``I``.
    """

    SILU = "silu"  # SwiGLU
    GELU = "gelu"  # GeGLU with exact erf GELU
    GELU_TANH = "gelu_tanh"  # GeGLU with the tanh approximation (Gemma's gelu_pytorch_tanh)
    SWIGLUOAI = "swigluoai"  # gpt-oss: clamped SwiGLU, alpha 1.702, (up + 1); see SwigluOAIParams
    SILU_CLAMP = "silu_clamp"  # SwiGLU on clamped inputs (DeepSeek-V4 swiglu_limit); see SiluClampParams
    RELU2_NO_MUL = "relu2_no_mul"  # relu(x)^2, non-gated (Nemotron-H)
    SILU_NO_MUL = "silu_no_mul"
    GELU_NO_MUL = "gelu_no_mul"
    GELU_TANH_NO_MUL = "gelu_tanh_no_mul"

    @property
    def is_gated(self) -> bool:
        # Same rule as vLLM's MoEActivation.is_gated (activation.py L48): one fact, derived.
        return not self.value.endswith("_no_mul")

    @classmethod
    def parse(cls, name: str) -> "Activation":
        """Accept an id or a Hugging Face ``hidden_act`` alias; raise ValueError otherwise."""
        key = name.strip().lower()
        try:
            return cls(key)
        except ValueError:
            pass
        if key in HF_ACTIVATION_ALIASES:
            return HF_ACTIVATION_ALIASES[key]
        valid = ", ".join(a.value for a in cls)
        aliases = ", ".join(sorted(HF_ACTIVATION_ALIASES))
        raise ValueError(f"unknown activation {name!r}; valid ids: {valid}; accepted aliases: {aliases}")


# Hugging Face config spellings (hidden_act / hidden_activation / mlp_hidden_act) -> our ids.
# gelu_new and gelu_pytorch_tanh are both the tanh form (transformers activations.py NewGELUActivation,
# PytorchGELUTanh); Nemotron-H's "relu2" is non-gated (vLLM nemotron_h.py is_act_and_mul=False).
HF_ACTIVATION_ALIASES: dict[str, Activation] = {
    "swish": Activation.SILU,
    "swiglu": Activation.SILU,
    "gelu_pytorch_tanh": Activation.GELU_TANH,
    "gelu_new": Activation.GELU_TANH,
    "geglu": Activation.GELU,
    "relu2": Activation.RELU2_NO_MUL,
    "relu_squared": Activation.RELU2_NO_MUL,
    "swiglu_oai": Activation.SWIGLUOAI,
    "swiglu_gptoss": Activation.SWIGLUOAI,
}

# Largest |gelu(x) - gelu_tanh(x)| over the reals (attained near |x| = 2.70); computed in float64
# over [-10, 10] at 1e-5 spacing. Used to bound the error of a declared approximation.
GELU_TANH_MAX_ABS_DIFF = 4.74e-4


class SwigluOAIParams(BaseModel):
    """gpt-oss clamped SwiGLU (transformers modular_gpt_oss.py GptOssExperts._apply_gate):
    ``g = min(gate, limit); u = clamp(up, -limit, limit); out = (u + up_offset) * g * sigmoid(alpha * g)``.

    ``interleaved``: GEMM1 rows alternate gate/up (the HF gpt-oss checkpoint layout) instead of the
    canonical ``[gate; up]`` halves.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(default=1.702, gt=0)
    limit: float | None = Field(default=7.0, gt=0)
    up_offset: float = 1.0
    interleaved: bool = False

    @model_validator(mode="after")
    def _finite(self) -> "SwigluOAIParams":
        for value in (self.alpha, self.limit, self.up_offset):
            if value is not None and not math.isfinite(value):  # NaN, inf (1e999): not JSON either
                raise ValueError("swigluoai parameters must be finite numbers")
        return self


class SiluClampParams(BaseModel):
    """SwiGLU with clamped inputs (a model config's ``swiglu_limit``, DeepSeek-V4):
    ``silu(min(gate, limit)) * clamp(up, -limit, limit)`` on ``[gate; up]`` halves.

    vLLM 0.33.0 ``fused_moe/utils.py`` ``_swiglu_limit_torch`` (and ``silu_and_mul_with_clamp`` with
    alpha 1, beta 0); DeepSeek-V4 ``inference/model.py`` ``Expert.forward``. It is swigluoai with
    alpha 1, up offset 0 and no interleave, but kernels take it as a separate mode, so it has its own id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: float = Field(gt=0, allow_inf_nan=False)


ActivationParams = SwigluOAIParams | SiluClampParams
