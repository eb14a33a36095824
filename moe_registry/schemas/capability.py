"""The declaration: what one fused-MoE experts backend supports, as data with a source per fact.

A BackendCapability is the single place a fact lives. Selection, the capability matrix, the CLI's
engine-flag names, the probe's expectations and the adapters' guards are all derived from it
(vLLM's #41050: the GELU allow-list and two asserts said the same thing, and only one was edited).
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .activation import Activation
from .device import DeviceSpec
from .layer import MAX_DIMENSION, MAX_EXPERTS, DType, LayerSpec, RoutingMethod
from .quant import QuantFamily, QuantKind, ScaleLayout, family_of

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # output is strict JSON

# Semantic bounds on every declared number, checked when a declaration is validated: a plugin's
# multiple_of=10**400 would otherwise overflow arithmetic in every selection (issue 23). Each is
# far above what a kernel declares and at the bound of what a layer may be (schemas.layer).
MAX_PRIORITY = 10**6
MAX_KERNEL_VALUE = 2**31 - 1  # a kernel enum is a C int
MAX_ABS_ERROR = 1e3
Size = Annotated[int, Field(ge=0, le=MAX_DIMENSION)]  # a dimension's min / max
Multiple = Annotated[int, Field(gt=0, le=MAX_DIMENSION)]  # multiple_of, pad multiples
GroupSize = Annotated[int, Field(ge=-1, le=MAX_DIMENSION)]  # -1: per channel
Sm = Annotated[int, Field(ge=10, le=200)]  # as DeviceSpec.sm
Count = Annotated[int, Field(ge=0, le=MAX_EXPERTS)]  # a backend's experts / top-k bound (0: runs none)
PositiveCount = Annotated[int, Field(gt=0, le=MAX_EXPERTS)]
Priority = Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)]

Dimension = Literal["hidden", "intermediate", "experts", "top_k"]
Fidelity = Literal["exact", "approximate"]


Sizes = Mapping[Dimension, int]
"""Per-rank sizes the kernel sees where a backend pads ({"hidden": 3072, "intermediate": 128})."""


def dimension_value(layer: LayerSpec, dimension: Dimension, sizes: Sizes | None = None) -> int:
    """Per-rank value of a dimension: rules always judge what one GPU actually runs. ``sizes``
    gives the padded hidden / intermediate where the backend pads, so rules judge what the kernel sees."""
    if sizes is not None and dimension in sizes:
        return sizes[dimension]
    return {
        "hidden": layer.hidden_size,
        "intermediate": layer.local_intermediate_size,
        "experts": layer.local_num_experts,
        "top_k": layer.top_k,
    }[dimension]


class Sourced(BaseModel):
    """A fact with its provenance: an upstream citation, and the devices on which one of our
    probe records confirmed it (``verified_on``: smNN names; the record lives in docs/verification)."""

    model_config = _FROZEN

    source: str = Field(min_length=1)
    verified_on: tuple[str, ...] = ()


class DeviceRule(Sourced):
    """Which devices a backend (or one of its quant schemes) runs on. ``sm`` lists exact
    capabilities; ``min_sm``/``max_sm`` give an inclusive range; vendor "any" matches every device."""

    vendor: Literal["nvidia", "amd", "cpu", "any"] = "nvidia"
    sm: tuple[Sm, ...] | None = None
    min_sm: Sm | None = None
    max_sm: Sm | None = None

    def matches(self, device: DeviceSpec) -> bool:
        if self.vendor == "any":
            return True
        if device.vendor != self.vendor:
            return False
        if self.vendor != "nvidia" or device.sm is None:
            return self.sm is None and self.min_sm is None and self.max_sm is None
        if self.sm is not None and device.sm not in self.sm:
            return False
        if self.min_sm is not None and device.sm < self.min_sm:
            return False
        return self.max_sm is None or device.sm <= self.max_sm

    def describe(self) -> str:
        if self.vendor == "any":
            return "any device"
        if self.vendor != "nvidia":
            return self.vendor.upper()
        if self.sm is not None:
            return "/".join(f"SM{s}" for s in self.sm)
        if self.min_sm is not None and self.max_sm is not None:
            return f"SM{self.min_sm}-SM{self.max_sm}"
        if self.min_sm is not None:
            return f"SM{self.min_sm}+"
        return f"up to SM{self.max_sm}" if self.max_sm is not None else "any NVIDIA GPU"


class DimTest(BaseModel):
    """A test on one per-rank dimension, used inside conditions."""

    model_config = _FROZEN

    dimension: Dimension
    multiple_of: Multiple | None = None
    not_multiple_of: Multiple | None = None
    min: Size | None = None
    max: Size | None = None

    def matches(self, layer: LayerSpec, sizes: Sizes | None = None) -> bool:
        value = dimension_value(layer, self.dimension, sizes)
        if self.multiple_of is not None and value % self.multiple_of:
            return False
        if self.not_multiple_of is not None and value % self.not_multiple_of == 0:
            return False
        if self.min is not None and value < self.min:
            return False
        return self.max is None or value <= self.max

    def describe(self) -> str:
        parts = []
        if self.multiple_of is not None:
            parts.append(f"{self.dimension} % {self.multiple_of} == 0")
        if self.not_multiple_of is not None:
            parts.append(f"{self.dimension} % {self.not_multiple_of} != 0")
        if self.min is not None:
            parts.append(f"{self.dimension} >= {self.min}")
        if self.max is not None:
            parts.append(f"{self.dimension} <= {self.max}")
        return " and ".join(parts)


class Condition(BaseModel):
    """When a rule applies. Every given field must match; an empty Condition always matches."""

    model_config = _FROZEN

    activations: tuple[Activation, ...] | None = None
    gated: bool | None = None
    quant: tuple[QuantKind, ...] | None = None
    group_sizes: tuple[GroupSize, ...] | None = None  # the layer's quant group size is one of these
    apply_router_weight_on_input: bool | None = None
    expert_parallel: bool | None = None  # the layer's experts are spread over EP ranks (ParallelConfig.ep > 1)
    dims: tuple[DimTest, ...] = ()

    def matches(self, layer: LayerSpec, sizes: Sizes | None = None) -> bool:
        if self.expert_parallel is not None and (layer.parallel.ep > 1) != self.expert_parallel:
            return False
        if (self.apply_router_weight_on_input is not None
                and layer.apply_router_weight_on_input != self.apply_router_weight_on_input):
            return False
        if self.activations is not None and layer.activation not in self.activations:
            return False
        if self.gated is not None and layer.activation.is_gated != self.gated:
            return False
        if self.quant is not None and layer.quant.kind not in self.quant:
            return False
        if self.group_sizes is not None and layer.quant.group_size not in self.group_sizes:
            return False
        return all(test.matches(layer, sizes) for test in self.dims)

    def describe(self) -> str:
        parts = []
        if self.activations is not None:
            parts.append("activation in {" + ", ".join(a.value for a in self.activations) + "}")
        if self.gated is not None:
            parts.append("gated" if self.gated else "non-gated")
        if self.quant is not None:
            parts.append("quant in {" + ", ".join(q.value for q in self.quant) + "}")
        if self.group_sizes is not None:
            parts.append("group size in {" + ", ".join(map(str, self.group_sizes)) + "}")
        if self.apply_router_weight_on_input is not None:
            parts.append("router weight on " + ("input" if self.apply_router_weight_on_input else "output"))
        if self.expert_parallel is not None:
            parts.append("expert parallel" if self.expert_parallel else "no expert parallelism")
        parts += [test.describe() for test in self.dims]
        return " and ".join(parts) or "always"


class ActivationImpl(Sourced):
    """How the kernel computes one of our activations.

    ``approximate`` means the kernel runs a different function (e.g. exact-erf GeGLU for the
    tanh form); ``max_abs_error`` bounds the difference of the activation itself.
    """

    kernel_name: str
    # The kernel's own enum value for this activation (e.g. FlashInfer ActivationType); adapters
    # pass it to the kernel, so it is stated here and nowhere else.
    kernel_value: int | None = Field(default=None, ge=-MAX_KERNEL_VALUE - 1, le=MAX_KERNEL_VALUE)
    fidelity: Fidelity = "exact"
    max_abs_error: float | None = Field(default=None, ge=0, le=MAX_ABS_ERROR)
    note: str = ""
    # False: the kernel runs this activation in its engine (cited) but moe-registry's adapter does not
    # pass it yet. Planning for a target reports it (a note); selecting to run here rejects it.
    adapter_implemented: bool = True

    @model_validator(mode="after")
    def _approximation_is_bounded(self) -> "ActivationImpl":
        if self.fidelity == "approximate" and not self.note:
            raise ValueError("an approximate activation must say what the kernel computes instead (note)")
        return self


class QuantSupport(Sourced):
    """One quantization scheme the backend runs, with its limits."""

    kind: QuantKind
    group_sizes: tuple[GroupSize, ...] | None = None  # None: whatever the format allows
    zero_point: bool = False
    act_order: bool = False
    activation_scale_layout: ScaleLayout | None = None  # the layout the kernel consumes
    devices: tuple[DeviceRule, ...] | None = None  # None: the backend's devices
    dtypes: tuple[DType, ...] | None = None  # None: the backend's dtypes
    dequantized_at_load: bool = False  # weights expanded when the layer is built (memory fit counts them so)
    dequantized_bits: Literal[16, 32] = 16  # what they are expanded to (the reference holds fp32)
    # False: the kernel runs this scheme (cited) but moe-registry's adapter cannot convert its
    # weights yet. Planning for a target still reports it; selecting to run here rejects it.
    adapter_implemented: bool = True
    note: str = ""


class DTypeRule(Sourced):
    """A hidden-state dtype that runs on only some of the backend's devices (Marlin: bf16 needs
    SM80+, its Turing kernels take fp16 only). A dtype with no rule runs on every backend device."""

    dtype: DType
    devices: tuple[DeviceRule, ...] = Field(min_length=1)


class ShapeRule(Sourced):
    """An alignment or size limit on a per-rank dimension. ``pad`` means the adapter zero-pads
    the weights up to the next multiple, which is exact (padded rows and columns are zero).

    A backend that pads the intermediate also pads it to whole scale groups of the checkpoint where
    TP cuts through one (selection's ``_check_format_groups``); conditions, other rules and known
    limitations are judged on the padded sizes, the sizes the kernel sees."""

    dimension: Dimension
    multiple_of: Multiple | None = None
    min: Size | None = None
    max: Size | None = None
    pad: bool = False
    when: Condition = Condition()

    @model_validator(mode="after")
    def _pad_needs_multiple(self) -> "ShapeRule":
        if self.pad and (self.multiple_of is None or self.dimension not in ("hidden", "intermediate")):
            raise ValueError("only hidden / intermediate multiple_of rules can be padded")
        return self


class KnownLimitation(Sourced):
    """A combination the kernel is known not to run, which no other rule expresses
    (e.g. TRT-LLM-gen has no tile configuration for non-gated relu2 at intermediate 704)."""

    when: Condition
    reason: str
    hint: str = ""


class RoutingLimit(Sourced):
    """Top-k / expert-count bounds of one routing path. ``methods`` names the in-kernel routing
    methods the bounds apply to; empty means the precomputed top-k path (a ``*_routed_moe`` entry).
    ``max_experts`` bounds the whole layer's expert count (the routing kernel indexes every expert;
    engines pass the global count even under EP)."""

    methods: tuple[RoutingMethod, ...] = ()
    max_top_k: PositiveCount | None = None
    max_experts: PositiveCount | None = None

    def failures(self, layer: LayerSpec) -> list[tuple[str, str, str]]:
        """(field, required, actual) for each bound the layer exceeds."""
        out = []
        if self.max_top_k is not None and layer.top_k > self.max_top_k:
            out.append(("top_k", f"<= {self.max_top_k}", str(layer.top_k)))
        if self.max_experts is not None and layer.num_experts > self.max_experts:
            out.append(("experts", f"<= {self.max_experts}", str(layer.num_experts)))
        return out

    def describe(self) -> str:
        parts = ([f"top-k <= {self.max_top_k}"] if self.max_top_k is not None else []) + (
            [f"experts <= {self.max_experts}"] if self.max_experts is not None else [])
        return " and ".join(parts) or "no limit"


class RoutingSupport(Sourced):
    """Routing the kernel computes itself (``in_kernel``) and whether it accepts top-k ids and
    weights computed outside (then any routing works, routed separately). ``limits`` holds the
    per-path top-k / expert bounds: one entry per group of in-kernel methods, and at most one with
    no methods for the precomputed path. A method or path without an entry has no bound."""

    in_kernel: tuple[RoutingMethod, ...] = ()
    precomputed: bool = True
    limits: tuple[RoutingLimit, ...] = ()

    @model_validator(mode="after")
    def _one_limit_per_path(self) -> "RoutingSupport":
        seen: list[RoutingMethod | None] = []
        for limit in self.limits:
            keys: list[RoutingMethod | None] = list(limit.methods) or [None]
            if any(k in seen for k in keys):
                raise ValueError("routing limits: one entry per method and one for the precomputed path")
            if any(m not in self.in_kernel for m in limit.methods):
                raise ValueError("routing limits name a method that is not in in_kernel")
            seen += keys
        return self

    def limit_for(self, method: RoutingMethod | None) -> RoutingLimit | None:
        """The bounds of in-kernel ``method``, or of the precomputed path for None."""
        for limit in self.limits:
            if (method in limit.methods) if method is not None else not limit.methods:
                return limit
        return None


class FeatureSupport(Sourced):
    bias: bool = False
    apply_router_weight_on_input: bool = False
    swigluoai_params: bool = False  # custom alpha / limit / up_offset / interleave
    cuda_graphs: bool = False  # a forward has no host sync and can be captured (moe_registry.execution.graphs)
    # Why two forwards on the same inputs may differ in the last bits (e.g. float32 atomics summing in no fixed
    # order); None: bit-for-bit reproducible. tests/gpu/test_graph_capture_gpu.py holds a backend to it.
    nondeterministic: str | None = Field(default=None, min_length=1)
    tensor_parallel: bool = True
    expert_parallel: bool = True


class Requirement(Sourced):
    """Software a backend needs on the machine that runs it.

    kind "package": an importable distribution. kind "torch_op": an op that must be registered;
    ``package`` names who registers it. kind "jit_module": a compiled module that must already be
    built; ``probe`` ("module:function", returning (built, detail)) checks without building, and
    ``build_cost`` is what the first use would cost.
    """

    kind: Literal["package", "torch_op", "jit_module"]
    name: str
    package: str | None = None  # distribution name for installing (pip)
    import_name: str | None = None  # module to import (package kind)
    probe: str | None = None
    build_cost: str | None = None
    when: Condition = Condition()
    devices: tuple[DeviceRule, ...] | None = None  # only needed on these devices
    hint: str = ""
    # torch_op: an environment variable that may name a library to load the op from (vLLM's _moe_C
    # on a machine without a vLLM install); a set variable naming an existing file satisfies the check.
    library_env: str | None = None


class EngineNames(BaseModel):
    """The same kernel in other engines, for `explain` output and migration."""

    model_config = _FROZEN

    vllm: str | None = None  # --moe-backend value
    sglang: str | None = None  # --moe-runner-backend value
    # SGLang names its runner per quant method: where a quant kind runs under another name than
    # ``sglang`` (MXFP4 on TRT-LLM-gen is ``flashinfer_mxfp4``) or under none (None), it is listed here.
    sglang_by_quant: dict[QuantKind, str | None] = {}
    trtllm: str | None = None  # MoeConfig.backend value
    source: str = ""

    def sglang_flag(self, kind: QuantKind) -> str | None:
        """SGLang's ``--moe-runner-backend`` value for this kernel on weights of ``kind``."""
        return self.sglang_by_quant[kind] if kind in self.sglang_by_quant else self.sglang


class PriorityOverride(Sourced):
    """A quant family's priority on some devices only (vLLM ranks Humming ahead of Marlin on SM90
    alone, and pushes FlashInfer's unquantized backends back on SM9x), optionally only for layers
    matching ``when`` (vLLM moves Triton first on Hopper for block FP8 without EP only): where a rule
    matches, it replaces ``priority[family]``; the first matching rule wins."""

    family: QuantFamily
    devices: tuple[DeviceRule, ...] = Field(min_length=1)
    priority: Priority
    when: Condition = Condition()


class HardwareStatus(BaseModel):
    """Whether this backend has run on a device family, and the record that shows it."""

    model_config = _FROZEN

    devices: str  # e.g. "sm90"
    status: Literal["verified", "not verified on hardware"]
    record: str | None = None  # docs/verification/... path
    note: str = ""


class BackendCapability(BaseModel):
    """The declaration of one backend."""

    model_config = _FROZEN

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    name: str
    provider: str
    description: str
    kernel: str  # the real kernel entry point
    adapter: str | None = None  # "module:Class" building an Experts for this backend
    # Row order of the gated GEMM1 weight the kernel consumes; adapters convert from the
    # canonical [gate; up] (FlashInfer/TRT-LLM want [up; gate], flashinfer-moe-api.md 1.4).
    gemm1_order: Literal["gate_up", "up_gate"] = "gate_up"
    devices: tuple[DeviceRule, ...]
    dtypes: tuple[DType, ...]
    dtype_devices: tuple[DTypeRule, ...] = ()  # dtypes restricted to some of ``devices``
    activations: dict[Activation, ActivationImpl]
    quant: tuple[QuantSupport, ...]
    shape_rules: tuple[ShapeRule, ...] = ()
    max_experts: Count | None = None  # per rank
    max_top_k: Count | None = None
    limitations: tuple[KnownLimitation, ...] = ()
    routing: RoutingSupport
    features: FeatureSupport
    requirements: tuple[Requirement, ...] = ()
    priority: dict[QuantFamily, Priority]  # higher runs first among eligible backends
    priority_overrides: tuple[PriorityOverride, ...] = ()
    engines: EngineNames = EngineNames()
    hardware: tuple[HardwareStatus, ...] = ()
    # None: a deployment kernel. Otherwise why it is not one (the fp32 reference is the test oracle):
    # a plan for a GPU target never picks it (the planner rejects it there with this reason).
    not_for_deployment: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "BackendCapability":
        # Catch table drift at declaration time, not at 3 a.m. (TRT-LLM moe_resolution.py).
        declared_families = {family_of(support.kind) for support in self.quant}
        missing = declared_families - set(self.priority)
        if missing:
            raise ValueError(f"{self.id}: no priority for quant families {sorted(f.value for f in missing)}")
        if not self.devices:
            raise ValueError(f"{self.id}: declares no devices")
        stray = [rule.dtype for rule in self.dtype_devices if rule.dtype not in self.dtypes]
        if stray:
            raise ValueError(f"{self.id}: device rules for dtypes it does not declare: {stray}")
        return self

    def quant_support(self, kind: QuantKind) -> tuple[QuantSupport, ...]:
        return tuple(s for s in self.quant if s.kind is kind)

    def priority_for(self, family: QuantFamily, device: DeviceSpec, layer: LayerSpec | None = None) -> int:
        """The rank of this backend for a quant family on a device (0 when the family has none); a rule
        with a ``when`` applies to a ``layer`` it matches (never without a layer)."""
        rule = self.priority_override_for(family, device, layer)
        return rule.priority if rule is not None else self.priority.get(family, 0)

    def priority_override_for(self, family: QuantFamily, device: DeviceSpec,
                              layer: LayerSpec | None = None) -> PriorityOverride | None:
        """The override that sets this backend's rank on ``device`` for ``layer`` (with its source), if any."""
        return next((rule for rule in self.priority_overrides
                     if rule.family is family and any(r.matches(device) for r in rule.devices)
                     and (rule.when == Condition() or (layer is not None and rule.when.matches(layer)))), None)
