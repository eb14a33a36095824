"""What selection answers: the chosen backend, and for every other backend every reason it lost."""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .device import DeviceSpec
from .layer import LayerSpec

_FROZEN = ConfigDict(frozen=True, extra="forbid")

PadDimension = Literal["hidden", "intermediate"]
"""The dimensions an adapter may pad."""


class ReasonCode(str, Enum):
    """Closed set of rejection causes (cf. TensorRT-LLM's MoERejectReason)."""

    DEVICE_UNSUPPORTED = "device_unsupported"
    ACTIVATION_UNSUPPORTED = "activation_unsupported"
    ACTIVATION_APPROXIMATE = "activation_approximate"
    QUANT_UNSUPPORTED = "quant_unsupported"
    QUANT_OPTION_UNSUPPORTED = "quant_option_unsupported"
    DTYPE_UNSUPPORTED = "dtype_unsupported"
    SHAPE_UNALIGNED = "shape_unaligned"
    SHAPE_OUT_OF_RANGE = "shape_out_of_range"
    KNOWN_LIMITATION = "known_limitation"
    ROUTING_UNSUPPORTED = "routing_unsupported"
    FEATURE_UNSUPPORTED = "feature_unsupported"
    PARALLEL_UNSUPPORTED = "parallel_unsupported"
    PACKAGE_MISSING = "package_missing"
    KERNEL_NOT_BUILT = "kernel_not_built"
    ADAPTER_MISSING = "adapter_missing"
    FORBIDDEN = "forbidden"
    MEMORY_EXCEEDED = "memory_exceeded"  # the planner's whole-model expert weights do not fit the device


class Reason(BaseModel):
    """One failed rule: what it required, what the layer had, and what would make it pass."""

    model_config = _FROZEN

    code: ReasonCode
    field: str
    required: str
    actual: str
    message: str
    hint: str = ""
    source: str = ""

    def render(self) -> str:
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


class Note(BaseModel):
    """Something the user should know that did not reject: an abstention ("unknown is not
    false"), an approximation accepted by policy, an assumption made while planning."""

    model_config = _FROZEN

    kind: Literal["abstained", "approximation", "assumed", "routing", "memory", "measured", "padding", "hint"]
    message: str


class Padding(BaseModel):
    """Zero-padding the adapter applies so the kernel's alignment holds (exact: padded weights
    are zero), with its cost relative to the unpadded layer."""

    model_config = _FROZEN

    dimension: PadDimension
    original: int
    padded: int
    multiple_of: int
    extra_weight_memory_pct: float
    extra_flops_pct: float


class Candidate(BaseModel):
    """An eligible backend, in the order the policy ranks them."""

    model_config = _FROZEN

    backend: str
    priority: int
    padding: tuple[Padding, ...] = ()
    notes: tuple[Note, ...] = ()
    estimated_us: float | None = None  # from a measured cost table, when one was given
    # Per-rank expert weights of this layer as this backend holds them (after its padding and its
    # dequantization at load): weights, block scales, per-tensor / global scales, biases.
    expert_weight_bytes: int | None = None
    weights_held: str = ""  # "mxfp4", "bf16 (dequantized from mxfp4)"


class Rejection(BaseModel):
    model_config = _FROZEN

    backend: str
    reasons: tuple[Reason, ...] = Field(min_length=1)
    notes: tuple[Note, ...] = ()

    def codes(self) -> set[ReasonCode]:
        return {r.code for r in self.reasons}


DecidedBy = Literal["forced", "env", "preferred", "priority", "measured"]


class PhaseChoice(BaseModel):
    """The backend that serves one phase of inference for this layer: ``decode`` (T up to the largest
    CUDA-graph bucket, replayed from graphs where the backend can be captured) or ``prefill`` (larger T,
    eager). Filled by a policy that has measurements on both sides (the measured policy); the prefill
    backend holds the same weights as the decode one (``weights_held``)."""

    model_config = _FROZEN

    phase: Literal["decode", "prefill"]
    tokens: str  # the token counts it covers, e.g. "T <= 64"
    backend: str
    mode: Literal["graph", "eager"]  # how its time was measured (and how an engine runs it)
    estimated_us: float | None = None  # summed over the measured token counts of the phase
    expert_weight_bytes: int | None = None  # this backend's copy of the layer's expert weights


class Selection(BaseModel):
    """The answer for one layer on one device. ``fingerprint`` lets ranks of a distributed job
    check they resolved the same way (ranks that disagree hang)."""

    model_config = _FROZEN

    layer: LayerSpec
    device: DeviceSpec
    planning: bool  # True: a named target device (packages assumed installable)
    backend: str
    decided_by: DecidedBy
    padding: tuple[Padding, ...] = ()
    notes: tuple[Note, ...] = ()
    eligible: tuple[Candidate, ...]
    rejections: tuple[Rejection, ...] = ()
    engines: dict[str, str] = {}
    fingerprint: str
    # Decode and prefill backends when the policy chose per phase (measured policy); empty: ``backend``
    # serves every token count.
    phases: tuple[PhaseChoice, ...] = ()

    def held_bytes(self) -> int:
        """Per-rank expert weight bytes of this layer as held: the chosen backend's, plus a copy for
        each other backend that serves a phase (each adapter converts the weights into its own layout)."""
        total = (self.eligible[0].expert_weight_bytes or 0) if self.eligible else 0
        seen = {self.backend}
        for p in self.phases:
            if p.backend not in seen:
                seen.add(p.backend)
                total += p.expert_weight_bytes or 0
        return total

    def rejection(self, backend: str) -> Rejection | None:
        return next((r for r in self.rejections if r.backend == backend), None)

    def describe(self) -> str:
        """One line: what runs, why, and what lost."""
        where = self.layer.name or "layer"
        pad = "".join(f", pad {p.dimension} {p.original}->{p.padded}" for p in self.padding)
        lost = ", ".join(f"{r.backend} ({', '.join(sorted(c.value for c in r.codes()))})" for r in self.rejections)
        return (f"{where} on {self.device.label()}: {self.backend} (by {self.decided_by}{pad})"
                + (f"; rejected: {lost}" if lost else ""))
