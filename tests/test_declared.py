"""Adapter guards derived from the declaration (``moe_registry.execution.declared``).

The adapters used to restate the declaration (activation allow-lists, alignments, arch lists):
vLLM #41050's anti-pattern. Now ``check_declared`` runs selection's own evaluation of the one
declaration, so an edit to the declaration is the only edit, for selection and adapter alike.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from moe_registry import LayerSpec, select_backend
from moe_registry.backends.flashinfer_cutlass import DECLARATION as CUTLASS
from moe_registry.backends.trtllm_gen.fp4 import DECLARATION as TRTLLM
from moe_registry.execution.declared import DEVICE_FIELDS, check_declared, declared_padding, device_spec_of
from moe_registry.registry import Registry
from moe_registry.schemas.activation import Activation
from moe_registry.schemas.device import PRESETS, get_device
from moe_registry.schemas.selection import ReasonCode

from _decl_helpers import assert_selected

B200, H100 = get_device("b200"), get_device("h100")


def nvfp4(**kw) -> LayerSpec:
    base = dict(num_experts=4, top_k=2, hidden_size=256, intermediate_size=128, activation="silu", quant="nvfp4")
    base.update(kw)
    return LayerSpec(**base)


def _registry_with(declaration):
    """The built-in registry with only this declaration replaced."""
    return Registry(entry_points=False).with_declaration(declaration)


def check(backend: str, layer: LayerSpec, device=None, **kw):
    sizes = dict(hidden_padded=layer.hidden_size, intermediate_padded=layer.local_intermediate_size)
    sizes.update(kw)
    return check_declared(backend, layer, device, **sizes)


# --- Every reason, in one line ---------------------------------------------------------------------

def test_bad_layer_raises_every_reason_in_one_line():
    layer = nvfp4(quant="fp8", dtype="fp16", activation="silu_no_mul", apply_router_weight_on_input=True, top_k=1,
                  num_experts=4096)
    with pytest.raises(ValueError) as info:
        check("trtllm-fp4", layer)
    msg = str(info.value)
    assert msg.startswith("trtllm-fp4: ") and "\n" not in msg
    for part in ("takes bf16 hidden states, not fp16", "does not run activation silu_no_mul", "does not run fp8",
                 "precomputed top-k needs experts <= 2048", "applies router weights to expert outputs only"):
        assert part in msg, part
    # Exactly what selection says for this backend on a device it runs on: the same evaluation.
    rejection = select_backend(layer, "b200").rejection("trtllm-fp4")
    assert len(rejection.reasons) == 5
    for reason in rejection.reasons:
        assert reason.render() in msg


def test_good_layer_passes_and_returns_the_declaration():
    assert check("trtllm-fp4", nvfp4()) is TRTLLM
    assert check("trtllm-fp4", nvfp4(activation="gelu", hidden_size=2816, intermediate_size=704), B200) is TRTLLM
    assert check("flashinfer-cutlass", nvfp4(quant="bf16")) is CUTLASS
    assert check("flashinfer-cutlass", nvfp4(quant="mxfp4"), H100) is CUTLASS


def test_unknown_backend_is_typed():
    from moe_registry.errors import UnknownBackend

    with pytest.raises(UnknownBackend):
        check("no-such-backend", nvfp4())


# --- Devices --------------------------------------------------------------------------------------

def test_without_a_device_only_device_reasons_are_left_out():
    mxfp4 = nvfp4(quant="mxfp4")
    check("flashinfer-cutlass", mxfp4)  # runs on SM90: fine without a device
    with pytest.raises(ValueError, match=r"runs mxfp4 only on SM90"):
        check("flashinfer-cutlass", mxfp4, B200)
    rejection = select_backend(mxfp4, "b200").rejection("flashinfer-cutlass")
    assert [r.field for r in rejection.reasons] == ["quant.device"]
    assert {"device", "quant.device", "dtype.device"} == DEVICE_FIELDS
    # Device-independent reasons of a scheme are still judged without a device (mxfp4: bf16 only).
    with pytest.raises(ValueError, match=r"does not run mxfp4 with fp16 hidden states \(takes bf16\)"):
        check("flashinfer-cutlass", mxfp4.replace(dtype="fp16"))
    with pytest.raises(ValueError, match="needs SM100/SM103/SM107; h100 \\(SM90\\) is not"):
        check("trtllm-fp4", nvfp4(), H100)
    with pytest.raises(ValueError, match="is not"):
        check("trtllm-fp4", nvfp4(), PRESETS["cpu"])


def test_adapter_missing_still_rejects():
    """An adapter is running here, so a scheme its weights cannot be converted for is refused."""
    layer = nvfp4(quant="int4_fp8", hidden_size=256, intermediate_size=256)
    with pytest.raises(ValueError, match="cannot convert its weights yet"):
        check("flashinfer-cutlass", layer)
    with pytest.raises(ValueError, match="cannot convert its weights yet"):
        check("flashinfer-cutlass", layer, H100)


# --- Padding --------------------------------------------------------------------------------------

def test_pads_are_required_and_declared_padding_matches_selection():
    gpt_oss_like = nvfp4(hidden_size=2880, intermediate_size=2880)  # 2880 % 256 == 64
    assert declared_padding("trtllm-fp4", gpt_oss_like) == (3072, 2880)
    s = select_backend(gpt_oss_like, "b200")
    assert_selected(s, "trtllm-fp4")
    assert {p.dimension: p.padded for p in s.padding} == {"hidden": 3072}
    with pytest.raises(ValueError, match=r"multiple of 256; the kernel would see 2880 \(pad hidden to 3072\)"):
        check("trtllm-fp4", gpt_oss_like)
    with pytest.raises(ValueError, match="pad hidden to 3072"):
        check("trtllm-fp4", gpt_oss_like, hidden_padded=2944)  # padded, but not to a multiple
    assert check("trtllm-fp4", gpt_oss_like, hidden_padded=3072) is TRTLLM


def test_pad_message_names_the_size_and_padding_cannot_shrink():
    relu2 = nvfp4(activation="relu2_no_mul", hidden_size=2816, intermediate_size=704)
    assert declared_padding("trtllm-fp4", relu2) == (2816, 768)
    with pytest.raises(ValueError, match=r"pad intermediate to 768"):
        check("trtllm-fp4", relu2)
    with pytest.raises(ValueError, match="smaller than the layer's 256"):
        check("trtllm-fp4", nvfp4(), hidden_padded=128)


def test_alignment_is_judged_on_the_padded_sizes():
    """A non-pad rule (CUTLASS bf16: I % 8) holds for the sizes the kernel sees once padded."""
    layer = nvfp4(quant="bf16", hidden_size=200, intermediate_size=100)
    with pytest.raises(ValueError, match="intermediate to be a multiple of 8"):
        check("flashinfer-cutlass", layer)
    assert check("flashinfer-cutlass", layer, hidden_padded=256, intermediate_padded=128) is CUTLASS
    assert declared_padding("flashinfer-cutlass", layer) == (200, 100)  # no pad rule: selection rejects instead


def test_tensor_parallel_sizes_are_per_rank():
    layer = nvfp4(hidden_size=2816, intermediate_size=1408, parallel={"tp": 2})  # 704 per rank
    assert declared_padding("trtllm-fp4", layer) == (2816, 704)
    assert check("trtllm-fp4", layer) is TRTLLM
    relu2 = layer.replace(activation="relu2_no_mul", intermediate_size=2 * 768)
    assert declared_padding("trtllm-fp4", relu2) == (2816, 768)
    assert check("trtllm-fp4", relu2) is TRTLLM


# --- One fact in one place: the adapter follows the declaration -------------------------------------

torch_needed = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


@torch_needed
def test_removing_an_activation_from_the_declaration_makes_the_adapter_refuse_it():
    """vLLM #41050 in reverse: one edit to the declaration and the adapter's own guard follows,
    with no change to the adapter."""
    from moe_registry.backends.trtllm_gen import fp4_kernel as K
    from moe_registry.execution.weights import random_weights

    layer = nvfp4(activation="gelu", hidden_size=256, intermediate_size=64)
    weights = random_weights(layer, seed=0)
    adapter = K.TrtllmFp4Experts._without_runtime_checks(layer, weights)
    assert adapter.activation_type == 4  # Geglu, the declaration's kernel_value

    without = TRTLLM.model_copy(update={"activations": {a: i for a, i in TRTLLM.activations.items()
                                                        if a is not Activation.GELU}})
    registry = _registry_with(without)
    assert select_backend(layer, "b200", registry=registry).rejection("trtllm-fp4") is not None
    with pytest.raises(ValueError, match="^trtllm-fp4: .*does not run activation gelu"):
        K.TrtllmFp4Experts._without_runtime_checks(layer, weights, registry=registry)
    with pytest.raises(ValueError, match="does not run activation gelu"):
        K.prepare_trtllm_fp4_weights(layer, weights, registry=registry)
    # Other activations are unaffected.
    silu = layer.replace(activation="silu")
    K.TrtllmFp4Experts._without_runtime_checks(silu, random_weights(silu, seed=0), registry=registry)


@torch_needed
def test_the_kernel_value_the_adapter_passes_is_the_declared_one():
    from moe_registry.backends.flashinfer_cutlass import kernel as FC
    from moe_registry.backends.trtllm_gen import fp4_kernel as K
    from moe_registry.execution.weights import random_weights

    layer = nvfp4(activation="gelu", hidden_size=256, intermediate_size=64)
    changed = {**TRTLLM.activations,
               Activation.GELU: TRTLLM.activations[Activation.GELU].model_copy(update={"kernel_value": 99})}
    registry = _registry_with(TRTLLM.model_copy(update={"activations": changed}))
    adapter = K.TrtllmFp4Experts._without_runtime_checks(layer, random_weights(layer, seed=0), registry=registry)
    assert adapter.activation_type == 99

    bf16 = layer.replace(quant="bf16")
    for act, impl in CUTLASS.activations.items():
        kw = {"activation": act}
        one = bf16.replace(**kw)
        assert FC.FlashInferCutlassExperts._without_runtime_checks(
            one, random_weights(one, seed=0)).activation_type == impl.kernel_value


# --- device_spec_of -------------------------------------------------------------------------------

@torch_needed
def test_device_spec_of(monkeypatch):
    import torch

    assert device_spec_of(torch.device("cpu")) == PRESETS["cpu"]
    assert device_spec_of("cpu") == PRESETS["cpu"]

    class Props:
        name = "NVIDIA H100 80GB HBM3"
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    spec = device_spec_of("cuda:0")
    assert spec.name == "h100" and spec.sm == 90 and spec.vendor == "nvidia"
    Props.name = "NVIDIA Future GPU"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 3))
    spec = device_spec_of(torch.device("cuda", 0))
    assert spec.sm == 103 and spec.name == "NVIDIA Future GPU"
    with pytest.raises(ValueError, match="meta"):
        device_spec_of("meta")


def test_importing_declared_does_not_import_torch():
    code = "import sys, moe_registry.execution.declared; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_dtype_that_needs_newer_devices_is_a_device_reason():
    """Marlin: bf16 hidden states need SM80+ (SM75 kernels take fp16 only); fp16 runs on SM75."""
    from moe_registry.schemas.device import get_device

    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=256, intermediate_size=256, quant="int4_w4a16:g128")
    check("marlin", layer)  # no device: the device-only rule is left out
    with pytest.raises(ValueError, match=r"runs bf16 hidden states only on SM80\+; sm75 \(SM75\) is not"):
        check("marlin", layer, get_device("sm75"))
    check("marlin", layer.replace(dtype="fp16"), get_device("sm75"))
    check("marlin", layer, get_device("sm80"))
    rejection = select_backend(layer, "sm75").rejection("marlin")
    assert [(r.code, r.field) for r in rejection.reasons] == [(ReasonCode.DTYPE_UNSUPPORTED, "dtype.device")]
    assert "fp16 hidden states run on sm75" in rejection.reasons[0].hint
    assert_selected(select_backend(layer.replace(dtype="fp16"), "sm75"), "marlin")


def test_every_marlin_scheme_has_a_hidden_rule():
    """vLLM keeps hidden unpadded (multiple of 128) for every Marlin scheme except MXFP4, which its
    MXFP4 oracle pads to 256: a scheme added to the declaration without either would skip both."""
    from moe_registry.backends.marlin import DECLARATION as MARLIN
    from moe_registry.schemas.quant import QuantKind

    for support in MARLIN.quant:
        rules = [(r.multiple_of, r.pad) for r in MARLIN.shape_rules if r.dimension == "hidden"
                 and (r.when.quant is None or support.kind in r.when.quant)]
        assert rules == ([(256, True)] if support.kind is QuantKind.MXFP4 else [(128, False)]), support.kind
