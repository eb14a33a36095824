"""The quant-kind table (schemas.quant.QUANT_KINDS) and the format classes' row-wise layout methods."""

from __future__ import annotations

import pytest
import torch

from moe_registry.formats import (
    Fp8BlockTensor,
    Int4GroupTensor,
    format_class,
    gate_up_to_up_gate,
    pad_weight,
    quantize,
)
from moe_registry.schemas import quant as Q
from moe_registry.schemas.quant import QUANT_KINDS, QuantFamily, QuantKind, QuantKindInfo, QuantScheme

# --- The table -----------------------------------------------------------------------------------

def test_every_kind_has_one_row_and_the_accessors_read_it():
    assert set(QUANT_KINDS) == set(QuantKind)
    for kind, row in QUANT_KINDS.items():
        scheme = QuantScheme(kind=kind)
        assert Q.family_of(kind) is row.family is scheme.family
        assert scheme.weight_bits == row.weight_bits and scheme.activation_format == row.activation_format
        assert scheme.group_size == (row.fixed_group if row.fixed_group is not None else row.default_group)
        assert scheme.is_quantized == (row.family is not QuantFamily.UNQUANTIZED)


def test_a_missing_row_fails_the_import_time_check(monkeypatch):
    monkeypatch.delitem(QUANT_KINDS, QuantKind.MXFP8)
    with pytest.raises(RuntimeError, match="no row for mxfp8"):
        Q._check_table()


def test_an_inconsistent_row_fails_the_import_time_check(monkeypatch):
    monkeypatch.setitem(QUANT_KINDS, QuantKind.BF16, QuantKindInfo(QuantFamily.UNQUANTIZED, 16, "bf16",
                                                                   format_class="Fp8Tensor"))
    with pytest.raises(RuntimeError, match="bf16: an unquantized kind"):
        Q._check_table()
    monkeypatch.setitem(QUANT_KINDS, QuantKind.INT4_W4A16, QuantKindInfo(QuantFamily.INT4, 4, "16-bit",
                                                                         fixed_group=32, default_group=128))
    monkeypatch.setitem(QUANT_KINDS, QuantKind.BF16, QuantKindInfo(QuantFamily.UNQUANTIZED, 16, "bf16"))
    with pytest.raises(RuntimeError, match="int4_w4a16: a group size is fixed or a default"):
        Q._check_table()


def test_a_fixed_group_is_enforced_and_a_default_group_is_a_choice():
    with pytest.raises(ValueError, match="fixed group size of 16"):
        QuantScheme(kind=QuantKind.NVFP4, group_size=32)
    assert QuantScheme(kind=QuantKind.INT4_W4A16, group_size=64).label() == "int4_w4a16:g64"
    with pytest.raises(ValueError, match="takes no group size"):
        QuantScheme(kind=QuantKind.FP8, group_size=128)
    with pytest.raises(ValueError, match="no block-scaled activations"):
        QuantScheme.parse("mxfp4:linear")
    assert QuantScheme.parse("mxfp4_mxfp8:linear").activation_scale_layout is Q.ScaleLayout.LINEAR


@pytest.mark.parametrize("kind", list(QuantKind))
def test_quantize_returns_the_kinds_format_class(kind):
    w = torch.randn(2, 64, 256)
    cls = format_class(kind)
    scheme = QuantScheme(kind=kind)
    if cls is None:
        with pytest.raises(ValueError, match="no weight format|not a quantized scheme"):
            quantize(w, scheme)
        return
    q = quantize(w, scheme)
    assert type(q) is cls and type(q).__name__ == QUANT_KINDS[kind].format_class
    assert q.scheme == scheme and Q.family_of(q.kind) is QUANT_KINDS[kind].family


# --- Row-wise layout changes, per format ----------------------------------------------------------

FORMATS = ["fp8", "fp8_channel", "fp8_block", "nvfp4", "mxfp4"]


@pytest.mark.parametrize("kind", FORMATS)
def test_padding_dequantizes_to_the_zero_padded_weight(kind):
    w = torch.randn(3, 256, 256)
    q = quantize(w, QuantScheme(kind=kind))
    d = q.dequantize()
    p = pad_weight(q, [(128, 256), (128, 256)], 384)
    want = torch.zeros(3, 512, 384)
    want[:, :128, :256], want[:, 256:384, :256] = d[:, :128], d[:, 128:]
    assert type(p) is type(q) and torch.equal(p.dequantize(), want)
    assert pad_weight(q, [(256, 256)], 256) is q  # nothing to pad: the same object


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("interleaved", [False, True])
def test_gate_up_swap_moves_scales_with_rows(kind, interleaved):
    w = torch.randn(2, 256, 256)
    q = quantize(w, QuantScheme(kind=kind))
    if kind == "fp8_block" and interleaved:
        with pytest.raises(ValueError, match="interleaved gate/up rows share 128x128 scale blocks"):
            gate_up_to_up_gate(q, 128, interleaved=True)
        return
    d = q.dequantize()
    want = (torch.cat([d[:, 1::2], d[:, 0::2]], dim=1) if interleaved
            else torch.cat([d[:, 128:], d[:, :128]], dim=1))
    assert torch.equal(gate_up_to_up_gate(q, 128, interleaved=interleaved).dequantize(), want)
    plain = gate_up_to_up_gate(w, 128, interleaved=interleaved)
    assert torch.equal(plain, torch.cat([w[:, 1::2], w[:, 0::2]], 1) if interleaved else w.roll(128, dims=1))


def test_formats_that_cannot_change_layout_exactly_refuse():
    q = quantize(torch.randn(2, 256, 256), QuantScheme(kind=QuantKind.INT4_W4A16))
    assert isinstance(q, Int4GroupTensor)
    with pytest.raises(ValueError, match="cannot pad a Int4GroupTensor weight"):
        pad_weight(q, [(256, 384)], 256)
    with pytest.raises(ValueError, match="cannot reorder a Int4GroupTensor weight"):
        gate_up_to_up_gate(q, 128)
    nv = quantize(torch.randn(2, 64, 256), QuantScheme(kind=QuantKind.NVFP4))
    with pytest.raises(ValueError, match="cannot pad K 256 -> 264 exactly"):
        pad_weight(nv, [(64, 64)], 264)
    blk = quantize(torch.randn(2, 192, 256), QuantScheme(kind=QuantKind.FP8_BLOCK))
    assert isinstance(blk, Fp8BlockTensor)
    with pytest.raises(ValueError, match="cannot pad a 96-row segment"):
        pad_weight(blk, [(96, 128), (96, 128)], 256)
    with pytest.raises(ValueError, match="I % 128 == 0, got I = 96"):
        gate_up_to_up_gate(blk, 96)
    with pytest.raises(ValueError, match="expected 2\\*I = 256"):
        gate_up_to_up_gate(blk, 128)


def test_expert_slices_every_tensor_field():
    q = quantize(torch.randn(3, 64, 256), QuantScheme(kind=QuantKind.NVFP4))
    assert torch.equal(q.expert(1).dequantize(), q.dequantize()[1])
