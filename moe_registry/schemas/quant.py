"""Quantization schemes of expert weights and activations.

A scheme is weight format x activation format x scale layout. The kinds follow vLLM's QuantKey
pairs (quantization/utils/quant_utils.py L197-330) but also carry what QuantKey leaves out: the
group size and the activation-scale layout (vllm-moe-backends.md section 8, item 9).
"""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from enum import Enum
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, model_validator


class QuantKind(str, Enum):
    BF16 = "bf16"  # unquantized
    FP16 = "fp16"  # unquantized
    FP8 = "fp8"  # W8A8 e4m3, per-tensor scales
    FP8_BLOCK = "fp8_block"  # W8A8 e4m3, 128x128 weight blocks, 1x128 dynamic activation groups
    # W8A8 e4m3, one scale per output channel, dynamic per-token activation scales (vLLM
    # kFp8StaticChannelSym x kFp8DynamicTokenSym, "PTPC"; FlashInfer trtllm_fp8_per_channel_scale_moe)
    FP8_CHANNEL = "fp8_channel"
    NVFP4 = "nvfp4"  # W4A4: e2m1, e4m3 scale per 16, fp32 global scale
    NVFP4_W4A16 = "nvfp4_w4a16"  # NvFP4 weights, 16-bit activations (Marlin on pre-Blackwell)
    MXFP4 = "mxfp4"  # W4A16: e2m1, e8m0 scale per 32 (gpt-oss)
    MXFP4_MXFP8 = "mxfp4_mxfp8"  # MXFP4 weights, MXFP8 activations
    INT4_W4A16 = "int4_w4a16"  # GPTQ / AWQ int4 weights with group scales
    INT4_FP8 = "int4_fp8"  # W4A8: int4 weights, fp8 activations
    # Declaration audit M17, C32-C34 (issue 8): kinds upstream kernels run that moe-registry has no
    # weight format for yet, so every backend declares them planning-only (adapter_implemented=False).
    INT8_W8A16 = "int8_w8a16"  # GPTQ 8-bit symmetric (uint8b128) weights, 16-bit activations
    MXFP8_W8A16 = "mxfp8_w8a16"  # MXFP8 weights (e4m3, e8m0 scale per 32), 16-bit activations
    MXFP8 = "mxfp8"  # W8A8: MXFP8 weights and MXFP8 activations
    MXFP4_FP8 = "mxfp4_fp8"  # MXFP4 weights, fp8 e4m3 activations (quantized per tensor or online)


class QuantFamily(str, Enum):
    """Priorities are declared per family: the order of backends for NvFP4 differs from BF16."""

    UNQUANTIZED = "unquantized"
    FP8 = "fp8"
    NVFP4 = "nvfp4"
    MXFP4 = "mxfp4"
    INT4 = "int4"
    INT8 = "int8"


class ScaleLayout(str, Enum):
    LINEAR = "linear"  # row-major [rows, K/group]
    SWIZZLED_128X4 = "swizzled_128x4"  # CUTLASS/TRT-LLM 128x4 block-scale interleave


class QuantKindInfo(NamedTuple):  # not a frozen dataclass: ~4x cheaper to define, and explain's start-up counts (issue 20)
    """Everything moe-registry knows about one ``QuantKind``, in one row.

    ``weight_bits``: bits per weight value (memory / roofline arithmetic). ``activation_format``:
    what the kernel's GEMMs take as activations. ``fixed_group``: K elements per weight scale when
    the format fixes it; ``default_group``: the default when a checkpoint may choose (-1 or > 0).
    ``block_scaled_activations``: activations carry block scales, so a scale layout applies.
    ``format_class``: the ``moe_registry.formats`` class holding its weights (a name, so this
    module stays torch-free; ``formats.format_class`` resolves it), None when unquantized or when
    no format exists yet (planning-only kinds).
    """

    family: QuantFamily
    weight_bits: int
    activation_format: str
    fixed_group: int | None = None
    default_group: int | None = None
    block_scaled_activations: bool = False
    format_class: str | None = None


_I = QuantKindInfo
QUANT_KINDS: dict[QuantKind, QuantKindInfo] = {
    QuantKind.BF16: _I(QuantFamily.UNQUANTIZED, 16, "bf16"),
    QuantKind.FP16: _I(QuantFamily.UNQUANTIZED, 16, "fp16"),
    QuantKind.FP8: _I(QuantFamily.FP8, 8, "fp8_e4m3", format_class="Fp8Tensor"),
    QuantKind.FP8_BLOCK: _I(QuantFamily.FP8, 8, "fp8_e4m3", fixed_group=128, format_class="Fp8BlockTensor"),
    QuantKind.FP8_CHANNEL: _I(QuantFamily.FP8, 8, "fp8_e4m3", format_class="Fp8ChannelTensor"),
    QuantKind.NVFP4: _I(QuantFamily.NVFP4, 4, "nvfp4", fixed_group=16, block_scaled_activations=True,
                        format_class="NvFp4Tensor"),
    QuantKind.NVFP4_W4A16: _I(QuantFamily.NVFP4, 4, "16-bit", fixed_group=16, format_class="NvFp4Tensor"),
    QuantKind.MXFP4: _I(QuantFamily.MXFP4, 4, "16-bit", fixed_group=32, format_class="MxFp4Tensor"),
    QuantKind.MXFP4_MXFP8: _I(QuantFamily.MXFP4, 4, "mxfp8", fixed_group=32, block_scaled_activations=True,
                              format_class="MxFp4Tensor"),
    QuantKind.INT4_W4A16: _I(QuantFamily.INT4, 4, "16-bit", default_group=128, format_class="Int4GroupTensor"),
    QuantKind.INT4_FP8: _I(QuantFamily.INT4, 4, "fp8_e4m3", default_group=128, format_class="Int4GroupTensor"),
    QuantKind.INT8_W8A16: _I(QuantFamily.INT8, 8, "16-bit", default_group=128),
    QuantKind.MXFP8_W8A16: _I(QuantFamily.FP8, 8, "16-bit", fixed_group=32),
    QuantKind.MXFP8: _I(QuantFamily.FP8, 8, "mxfp8", fixed_group=32, block_scaled_activations=True),
    QuantKind.MXFP4_FP8: _I(QuantFamily.MXFP4, 4, "fp8_e4m3", fixed_group=32),
}
del _I


def _check_table() -> None:
    """Every kind has exactly one row, and a row is consistent: a kind added to the enum without
    its row fails at import."""
    missing = sorted(k.value for k in set(QuantKind) - set(QUANT_KINDS))
    if missing:
        raise RuntimeError(f"schemas.quant.QUANT_KINDS has no row for {', '.join(missing)}")
    for kind, info in QUANT_KINDS.items():
        unquantized = info.family is QuantFamily.UNQUANTIZED
        if info.fixed_group is not None and info.default_group is not None:
            raise RuntimeError(f"{kind.value}: a group size is fixed or a default, not both")
        if unquantized and (info.format_class or info.fixed_group or info.default_group):
            raise RuntimeError(f"{kind.value}: an unquantized kind has no format class or group size")


_check_table()


def quant_info(kind: QuantKind) -> QuantKindInfo:
    """The row of ``kind``."""
    return QUANT_KINDS[kind]


def family_of(kind: QuantKind) -> QuantFamily:
    return QUANT_KINDS[kind].family


class QuantScheme(BaseModel):
    """How a layer's expert weights (and activations) are quantized.

    ``group_size`` is the number of K elements that share one weight scale (-1: one per output
    channel); ``None`` for unquantized and per-tensor FP8. ``activation_scale_layout`` is left
    ``None`` (unknown: rules abstain) unless activations arrive pre-quantized in a known layout.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: QuantKind = QuantKind.BF16
    group_size: int | None = None
    zero_point: bool = False  # asymmetric int4 (AWQ); GPTQ is symmetric
    act_order: bool = False  # GPTQ desc_act: groups follow a permutation (g_idx)
    activation_scale_layout: ScaleLayout | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_group_default(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("group_size") is None and "kind" in data:
            try:
                kind = QuantKind(data["kind"])
            except ValueError:
                return data
            info = QUANT_KINDS[kind]
            default = info.fixed_group if info.fixed_group is not None else info.default_group
            if default is not None:
                data = {**data, "group_size": default}
        return data

    @model_validator(mode="after")
    def _check(self) -> "QuantScheme":
        info = QUANT_KINDS[self.kind]
        fixed = info.fixed_group
        if fixed is not None and self.group_size != fixed:
            raise ValueError(f"{self.kind.value} has a fixed group size of {fixed}, got {self.group_size}")
        if info.default_group is not None:
            if self.group_size is None or not (self.group_size == -1 or self.group_size > 0):
                raise ValueError(f"{self.kind.value} group size must be -1 (per channel) or positive")
        elif fixed is None and self.group_size is not None:
            raise ValueError(f"{self.kind.value} takes no group size")
        if self.zero_point and self.family is not QuantFamily.INT4:
            raise ValueError("zero points apply to int4 schemes only")
        if self.act_order and self.family is not QuantFamily.INT4:
            raise ValueError("act_order (GPTQ desc_act) applies to int4 schemes only")
        if self.activation_scale_layout is not None and not info.block_scaled_activations:
            raise ValueError(f"{self.kind.value} has no block-scaled activations, so no activation scale layout")
        return self

    # --- Derived facts -------------------------------------------------------------------------

    @property
    def family(self) -> QuantFamily:
        return QUANT_KINDS[self.kind].family

    @property
    def weight_bits(self) -> int:
        return QUANT_KINDS[self.kind].weight_bits

    @property
    def activation_format(self) -> str:
        return QUANT_KINDS[self.kind].activation_format

    @property
    def is_quantized(self) -> bool:
        return self.family is not QuantFamily.UNQUANTIZED

    @property
    def partial_last_group(self) -> bool:
        """Whether a weight may end in a partial scale group along K: DeepSeek's 128x128 blocks are
        ceil(N/128) x ceil(K/128) (README_WEIGHTS.md), so I=704 is a valid fp8_block checkpoint; the
        other formats need K % group == 0 (GPTQ packing, NvFP4/MXFP4 quantizers)."""
        return self.kind is QuantKind.FP8_BLOCK

    @property
    def scale_group_k(self) -> int | None:
        """K elements per weight scale (the alignment a per-rank K must keep), None if none."""
        return self.group_size if self.group_size and self.group_size > 0 else None

    def matrix_bytes(self, rows: int, cols: int) -> int:
        """Bytes of one expert weight ``[rows, cols]`` (``[N, K]``, K the reduction) in this format:
        packed values, block / group scales along K (a partial last group counts whole), and the
        per-tensor or global fp32 scale. Activation scales are not counted (a few bytes per expert)."""
        values = rows * cols * self.weight_bits // 8
        k_groups = -(-cols // self.group_size) if self.group_size and self.group_size > 0 else 1
        kind = self.kind
        if kind in (QuantKind.BF16, QuantKind.FP16):
            return values
        if kind is QuantKind.FP8:
            return values + 4
        if kind is QuantKind.FP8_BLOCK:  # fp32 scale per 128x128 block (DeepSeek weight_scale_inv)
            return values + 4 * -(-rows // 128) * k_groups
        if kind in (QuantKind.NVFP4, QuantKind.NVFP4_W4A16):  # e4m3 per 16 + fp32 global
            return values + rows * k_groups + 4
        if kind in (QuantKind.MXFP4, QuantKind.MXFP4_MXFP8):  # e8m0 per 32
            return values + rows * k_groups
        # int4 (GPTQ / AWQ / W4A8): 16-bit scale per group and column, 4-bit zero points, int32 g_idx
        return (values + 2 * rows * k_groups + (rows * k_groups // 2 if self.zero_point else 0)
                + (4 * cols if self.act_order else 0))

    def label(self) -> str:
        """Short, parseable form: ``int4_w4a16:g128``, ``nvfp4``, ``int4_w4a16:gchannel:zp``."""
        text = self.kind.value
        if QUANT_KINDS[self.kind].default_group is not None:
            text += ":gchannel" if self.group_size == -1 else f":g{self.group_size}"
        if self.zero_point:
            text += ":zp"
        if self.act_order:
            text += ":act_order"
        if self.activation_scale_layout is not None:
            text += f":{self.activation_scale_layout.value}"
        return text

    def __str__(self) -> str:
        return self.label()

    @classmethod
    def parse(cls, text: str) -> "QuantScheme":
        """Parse ``kind[:gN|:gchannel][:zp][:act_order][:linear|:swizzled_128x4]``.

        Raises ValueError with the list of valid kinds for anything else.
        """
        if not isinstance(text, str):
            from ..errors import InvalidArgument

            raise InvalidArgument(f"a quantization scheme is a string such as 'nvfp4', got {type(text).__name__}")
        parts = [p for p in text.strip().lower().split(":") if p]
        if not parts:
            raise ValueError("empty quantization scheme")
        name = _KIND_ALIASES.get(parts[0], parts[0])
        try:
            kind = QuantKind(name)
        except ValueError:
            valid = ", ".join(k.value for k in QuantKind)
            raise ValueError(f"unknown quantization scheme {parts[0]!r}; valid: {valid}") from None
        fields: dict[str, Any] = {"kind": kind}
        for part in parts[1:]:
            if part in ("gchannel", "g-1"):
                fields["group_size"] = -1
            elif part.startswith("g") and part[1:].isdigit():
                fields["group_size"] = int(part[1:])
            elif part == "zp":
                fields["zero_point"] = True
            elif part == "act_order":
                fields["act_order"] = True
            elif part in {layout.value for layout in ScaleLayout}:
                fields["activation_scale_layout"] = ScaleLayout(part)
            else:
                raise ValueError(f"unknown quantization option {part!r} in {text!r}")
        return cls(**fields)


_KIND_ALIASES = {"unquantized": "bf16", "bfloat16": "bf16", "float16": "fp16"}
