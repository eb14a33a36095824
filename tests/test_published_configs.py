"""Issue 12: planner gaps found on published Hugging Face configs, parallel flags as engines spell
them, hints true as written. Each config holds only the keys that matter, with the values of the
published config.json named in the test (hidden sizes, expert counts, layer rules)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_registry.cli import main
from moe_registry.planner import MalformedConfig, NotAMoEModel, plan_config
from moe_registry.schemas.activation import Activation, SiluClampParams
from moe_registry.schemas.layer import LayerSpec, RoutingMethod
from moe_registry.schemas.quant import QuantKind
from moe_registry.selection import select_backend

ROOT = Path(__file__).resolve().parents[1]


def plan(config, **kw):
    return plan_config(config, select=False, **kw)


def shapes(p):
    return {(l.num_experts, l.top_k, l.hidden_size, l.intermediate_size) for l in p.layer_specs}


# --- 1. Jamba: expert_layer_period / expert_layer_offset -------------------------------------------

JAMBA = {  # ai21labs/AI21-Jamba-Mini-1.5 (and Jamba-v0.1): every other layer is MoE
    "model_type": "jamba", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_experts": 16, "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
    "attn_layer_period": 8, "attn_layer_offset": 4, "num_attention_heads": 32, "num_key_value_heads": 8,
    "hidden_act": "silu", "torch_dtype": "bfloat16",
}


def test_jamba_moe_layers_follow_period_and_offset():
    p = plan(JAMBA)
    assert [l.index for l in p.layer_specs] == list(range(1, 32, 2))  # 16 of 32
    assert p.layer_specs[0].name == "model.layers.1.feed_forward.experts"
    assert p.layer_specs[0].routing is RoutingMethod.SOFTMAX_TOPK  # Jamba does not renormalise
    assert any("16 of 32 layers are MoE (expert_layer_period=2, expert_layer_offset=1)" in n for n in p.notes)
    with pytest.raises(MalformedConfig, match="expert_layer_offset 2 must be below expert_layer_period 2"):
        plan({**JAMBA, "expert_layer_offset": 2})


# --- 2. MiMo-V2-Flash: moe_layer_freq as a per-layer list ---------------------------------------------

MIMO = {  # XiaomiMiMo/MiMo-V2-Flash: layer 0 dense, 1-47 MoE
    "model_type": "mimo_v2_flash", "hidden_size": 4096, "num_hidden_layers": 48, "n_routed_experts": 256,
    "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "intermediate_size": 16384,
    "moe_layer_freq": [0] + [1] * 47, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "num_attention_heads": 64, "num_key_value_heads": 4, "hidden_act": "silu",
}


def test_mimo_per_layer_moe_layer_freq_list():
    p = plan(MIMO)
    assert [l.index for l in p.layer_specs] == list(range(1, 48))  # 47 of 48
    assert shapes(p) == {(256, 8, 4096, 2048)}
    assert p.layer_specs[0].routing is RoutingMethod.DEEPSEEK_V3
    with pytest.raises(MalformedConfig, match="one 0 or 1 per layer"):
        plan({**MIMO, "moe_layer_freq": [0, 1, 1]})


# --- 3. Nemotron 3 Super: LatentMoE -------------------------------------------------------------------

NEMOTRON_SUPER = {  # nvidia/NVIDIA-Nemotron-3-Super-120B-A12B: hidden 4096, experts on a 1024-wide latent
    "model_type": "nemotron_h", "hidden_size": 4096, "moe_latent_size": 1024, "n_routed_experts": 512,
    "num_experts_per_tok": 22, "moe_intermediate_size": 2688, "num_hidden_layers": 8,
    "hybrid_override_pattern": "MEMEM*EM", "mlp_hidden_act": "relu2", "num_attention_heads": 32,
    "num_key_value_heads": 2,
}


def test_latent_moe_experts_take_the_latent_width():
    p = plan(NEMOTRON_SUPER)
    assert {l.hidden_size for l in p.layer_specs} == {1024}
    assert [l.index for l in p.layer_specs] == [1, 3, 6]
    assert p.layer_specs[0].activation is Activation.RELU2_NO_MUL
    assert any("moe_latent_size 1024" in n and "4096" in n for n in p.notes)
    without = {k: v for k, v in NEMOTRON_SUPER.items() if k != "moe_latent_size"}
    assert {l.hidden_size for l in plan(without).layer_specs} == {4096}


# --- 4. DeepSeek-V4-Flash: expert_dtype fp4 and swiglu_limit ------------------------------------------

DSV4_FLASH = {  # deepseek-ai/DeepSeek-V4-Flash
    "model_type": "deepseek_v4", "hidden_size": 4096, "num_hidden_layers": 43, "n_routed_experts": 256,
    "num_experts_per_tok": 6, "moe_intermediate_size": 2048, "n_shared_experts": 1, "hidden_act": "silu",
    "swiglu_limit": 10.0, "expert_dtype": "fp4", "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc",
    "num_hash_layers": 3, "num_attention_heads": 64, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
}


def test_deepseek_v4_fp4_experts_and_clamped_swiglu():
    p = plan(DSV4_FLASH)
    layer = p.layer_specs[0]
    assert len(p.layer_specs) == 43 and layer.name == "layers.0.ffn.experts"
    assert layer.activation is Activation.SILU_CLAMP and layer.activation_params == SiluClampParams(limit=10.0)
    assert layer.quant.kind is QuantKind.MXFP4_MXFP8 and layer.quant.group_size == 32
    assert layer.routing is RoutingMethod.CUSTOM  # sqrtsoftplus (and hash layers): no kernel enum
    assert "routed experts mxfp4_mxfp8 (expert_dtype fp4)" in p.quantization
    # Flash-Base: expert_dtype fp8 keeps the block-FP8 quantization_config for the experts too.
    base = plan({**DSV4_FLASH, "expert_dtype": "fp8"})
    assert base.layer_specs[0].quant.kind is QuantKind.FP8_BLOCK
    # --quant overrides the checkpoint, expert_dtype included.
    assert plan(DSV4_FLASH, quant="mxfp4").layer_specs[0].quant.kind is QuantKind.MXFP4
    with pytest.raises(MalformedConfig, match="expert_dtype must be one of"):
        plan({**DSV4_FLASH, "expert_dtype": "int2"})
    with pytest.raises(MalformedConfig, match="swiglu_limit must be a finite positive number"):
        plan({**DSV4_FLASH, "swiglu_limit": "ten"})


def test_silu_clamp_is_declared_by_the_reference_and_triton_lowt_only_and_its_maths():
    torch = pytest.importorskip("torch")
    from moe_registry.execution.activations import apply_activation

    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, activation="silu_clamp",
                      activation_params={"limit": 10.0}, routing=RoutingMethod.CUSTOM)
    s = select_backend(layer, "h100")
    # triton-lowt-moe runs it as its swigluoai epilogue (alpha 1, no up offset).
    assert [c.backend for c in s.eligible] == ["triton-lowt-moe", "reference"]
    # humming and trtllm-fp4 run it in vLLM 0.34 (DeepSeek-V4) and declare it planning-only (issue 20);
    # every other backend lacks it.
    from moe_registry.registry import default_registry

    planning_only = {d.id for d in default_registry().declarations()
                     if Activation.SILU_CLAMP in d.activations and not d.activations[Activation.SILU_CLAMP].adapter_implemented}
    assert planning_only == {"humming", "trtllm-fp4"}
    assert all(any(r.code.value == "activation_unsupported" for r in rej.reasons) for rej in s.rejections
               if rej.backend not in planning_only | {"reference", "triton-lowt-moe"})
    h = torch.tensor([[-20.0, 0.5, 20.0, 12.0, -30.0, 3.0]])  # gate | up
    gate, up = torch.tensor([-20.0, 0.5, 10.0]), torch.tensor([10.0, -10.0, 3.0])
    expected = torch.nn.functional.silu(gate) * up
    assert torch.allclose(apply_activation(h, layer), expected.unsqueeze(0))
    with pytest.raises(ValueError, match="silu_clamp needs activation_params"):
        LayerSpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, activation="silu_clamp")


# --- 5. A config without hidden_act: the transformers default for its model_type ---------------------

def test_missing_activation_gets_the_model_type_default_with_a_note():
    olmoe = {"model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
             "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False}  # allenai/OLMoE-1B-7B-0924
    p = plan(olmoe)
    assert p.layer_specs[0].activation is Activation.SILU
    assert any("'silu' assumed (transformers' olmoe default)" in n for n in p.notes)
    with pytest.raises(MalformedConfig, match="no known default"):
        plan({**olmoe, "model_type": "my_moe"})


# --- 6. Other families' MoE keys ------------------------------------------------------------------------

DBRX = {  # databricks/dbrx-instruct
    "model_type": "dbrx", "d_model": 6144, "n_heads": 48, "n_layers": 40, "max_seq_len": 32768,
    "attn_config": {"kv_n_heads": 8, "clip_qkv": 8, "rope_theta": 500000},
    "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4,
                   "ffn_act_fn": {"name": "silu"}, "moe_normalize_expert_weights": 1},
}
ERNIE = {  # baidu/ERNIE-4.5-21B-A3B-PT
    "model_type": "ernie4_5_moe", "hidden_size": 2560, "intermediate_size": 12288, "moe_intermediate_size": 1536,
    "moe_num_experts": 64, "moe_k": 6, "num_hidden_layers": 28, "moe_layer_start_index": 1,
    "moe_layer_end_index": 27, "moe_layer_interval": 1, "num_attention_heads": 20, "num_key_value_heads": 4,
    "hidden_act": "silu",
}
HUNYUAN = {  # tencent/Hunyuan-A13B-Instruct: per-layer lists
    "model_type": "hunyuan_v1_moe", "hidden_size": 4096, "num_hidden_layers": 32, "num_experts": 64,
    "moe_topk": [8] * 32, "moe_intermediate_size": [3072] * 32, "intermediate_size": 3072,
    "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
}
PHIMOE = {  # microsoft/Phi-3.5-MoE-instruct
    "model_type": "phimoe", "hidden_size": 4096, "intermediate_size": 6400, "num_hidden_layers": 32,
    "num_local_experts": 16, "num_experts_per_tok": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
    "hidden_act": "silu",
}
GRANITE = {  # ibm-granite/granite-3.0-3b-a800m-instruct
    "model_type": "granitemoe", "hidden_size": 1536, "intermediate_size": 512, "num_hidden_layers": 32,
    "num_local_experts": 40, "num_experts_per_tok": 8, "num_attention_heads": 24, "num_key_value_heads": 8,
    "hidden_act": "silu",
}


@pytest.mark.parametrize("config, count, shape, name, routing", [
    (DBRX, 40, (16, 4, 6144, 10752), "transformer.blocks.0.ffn.experts", RoutingMethod.SOFTMAX_TOPK_RENORM),
    (ERNIE, 27, (64, 6, 2560, 1536), "model.layers.1.mlp.experts", RoutingMethod.CUSTOM),
    (HUNYUAN, 32, (64, 8, 4096, 3072), "model.layers.0.mlp.experts", None),
    (PHIMOE, 32, (16, 2, 4096, 6400), "model.layers.0.block_sparse_moe.experts", RoutingMethod.CUSTOM),
    (GRANITE, 32, (40, 8, 1536, 512), "model.layers.0.block_sparse_moe", RoutingMethod.TOPK_SOFTMAX),
])
def test_other_families_are_read(config, count, shape, name, routing):
    p = plan(config)
    assert len(p.layer_specs) == count and shapes(p) == {shape}
    assert p.layer_specs[0].name == name and p.layer_specs[0].routing is routing
    assert not any("not a known MoE family" in n for n in p.notes)


def test_per_layer_lists_and_refused_keys_give_one_line_reasons():
    varying = {**HUNYUAN, "moe_topk": [8] * 16 + [4] * 16}
    assert {l.top_k for l in plan(varying).layer_specs} == {8, 4}
    with pytest.raises(MalformedConfig, match="moe_topk lists 3 values for 32 layers"):
        plan({**HUNYUAN, "moe_topk": [8, 8, 8]})
    with pytest.raises(MalformedConfig, match="ERNIE-4.5-VL .* not planned"):
        plan({**ERNIE, "moe_num_experts": [64, 64]})
    with pytest.raises(MalformedConfig, match="DBRX ffn_config and attn_config must be objects"):
        plan({**DBRX, "ffn_config": 3})
    with pytest.raises(NotAMoEModel):
        plan({**ERNIE, "moe_layer_start_index": 30})
    # transformers Ernie4_5_MoeConfig: an end index of -1 means the last layer
    assert len(plan({**ERNIE, "moe_layer_end_index": -1, "moe_layer_interval": 2}).layer_specs) == 14


# --- 7. Parallel flags as the engines spell them -------------------------------------------------------

def _parallel_of(capsys, *flags):
    code = main(["explain", "qwen3-30b-a3b", "--device", "h100", "--json", *flags])
    out, err = capsys.readouterr()
    return code, (json.loads(out)["parallel"] if code in (0, 3) else err)


@pytest.mark.parametrize("flags, layout", [
    (["--tp", "8"], {"tp": 8, "ep": 1, "dp": 1}),
    (["--tp", "8", "--enable-expert-parallel"], {"tp": 1, "ep": 8, "dp": 1}),  # vLLM -tp 8 -ep
    (["--tp", "8", "-ep"], {"tp": 1, "ep": 8, "dp": 1}),
    (["--tp", "8", "--ep", "8"], {"tp": 1, "ep": 8, "dp": 1}),  # SGLang --tp-size 8 --ep-size 8
    (["--tp", "8", "--ep", "2"], {"tp": 4, "ep": 2, "dp": 1}),
    (["--ep", "8"], {"tp": 1, "ep": 8, "dp": 1}),
    (["--tp", "4", "--dp", "2", "--enable-expert-parallel"], {"tp": 1, "ep": 8, "dp": 2}),
])
def test_parallel_flags_mean_what_engines_mean(capsys, flags, layout):
    code, parallel = _parallel_of(capsys, *flags)
    assert code == 0 and parallel == layout


@pytest.mark.parametrize("flags, needle", [
    (["--tp", "2", "--ep", "4"], "--ep 4 must divide --tp 2"),
    (["--tp", "8", "--ep", "4", "--enable-expert-parallel"], "contradicts"),
    (["--tp", "0"], "must be positive"),
])
def test_contradictory_parallel_flags_exit_2(capsys, flags, needle):
    code, err = _parallel_of(capsys, *flags)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_help_documents_the_engine_forms(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert "--tp 8 --enable-expert-parallel" in out and "SGLang --tp-size 8 --ep-size 8" in out


# --- 8. Hints offer only TP sizes the model can run ----------------------------------------------------

def test_tp_hints_divide_the_attention_and_kv_heads(capsys):
    # Qwen3-30B-A3B: 32 heads, 4 KV heads, I=768; at TP8 the per-rank 96 breaks 128-wide rules.
    code = main(["explain", "qwen3-30b-a3b", "--device", "h100", "--tp", "8", "--json"])
    data = json.loads(capsys.readouterr().out)
    hints = [r["hint"] for g in data["groups"] for rej in (g.get("rejections") or g["selection"]["rejections"])
             for r in rej["reasons"] if r["hint"]]
    tp_hints = [h for h in hints if "gives intermediate" in h]
    assert code in (0, 3) and tp_hints
    assert not any(f"TP{t} gives" in h for h in tp_hints for t in (3, 5, 6, 7))
    layer = LayerSpec(num_experts=128, top_k=8, hidden_size=2048, intermediate_size=768, attention_heads=32,
                      kv_heads=4)
    assert [t for t in range(1, 9) if layer.runnable_tp(t)] == [1, 2, 4, 8]


# --- 9. bf16 below SM80 ---------------------------------------------------------------------------------

def test_bf16_model_on_sm75_is_planned_in_fp16():
    p = plan_config({**PHIMOE, "torch_dtype": "bfloat16"}, device="sm75", select=False)
    assert {l.dtype for l in p.layer_specs} == {"fp16"} and p.layer_specs[0].quant.kind is QuantKind.FP16
    assert any("has no bf16: planned in fp16" in n for n in p.notes)
    assert {l.dtype for l in plan_config(PHIMOE, device="sm80", select=False).layer_specs} == {"bf16"}


# --- 12. A closed pipe is a normal end -------------------------------------------------------------------

def test_explain_into_a_closed_pipe_exits_0():
    proc = subprocess.run(f"{sys.executable} -m moe_registry.cli explain deepseek-v3 --device h100 | head -1",
                          shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          executable="/bin/bash", env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                       "COLUMNS": "80"})
    assert proc.stdout.count("\n") == 1 and "Broken pipe" not in proc.stderr and proc.stderr == ""
    # `true` exits before Python has started, so every write meets a closed pipe.
    for flags in ("", "--json", "--markdown"):
        status = subprocess.run(f"set -o pipefail; {sys.executable} -m moe_registry.cli explain deepseek-v3 "
                                f"--device h100 {flags} | true", shell=True, cwd=ROOT, executable="/bin/bash",
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=120,
                                capture_output=True, text=True)
        assert status.returncode == 0 and status.stderr == "", (flags, status.stderr)


# --- 13. Hints true as written ----------------------------------------------------------------------------

def test_activation_hint_says_when_declaring_it_is_not_enough():
    # silu_clamp with GPTQ act_order on H100: marlin lacks the activation AND act_order.
    layer = LayerSpec(num_experts=8, top_k=2, hidden_size=128, intermediate_size=128, activation="silu_clamp",
                      activation_params={"limit": 7.0}, quant="int4_w4a16:g128:act_order")
    s = select_backend(layer, "h100")
    hint = next(r.hint for r in s.rejection("marlin").reasons if r.code.value == "activation_unsupported")
    assert "that alone is not enough: it also fails on" in hint and "quant_option_unsupported" in hint
    assert "the only change needed" not in hint
    only = select_backend(layer.replace(bias=False, quant="bf16"), "h100")
    rej = only.rejection("torch-grouped-mm")
    assert [r.code.value for r in rej.reasons] == ["activation_unsupported"]
    assert rej.reasons[0].hint.endswith("that is the only change needed")


# --- 10-11. Output a person reads at a glance, in the terminal's width --------------------------------

@pytest.mark.parametrize("columns", [80, 120])
def test_explain_fits_the_width_and_never_cuts_an_id(columns):
    proc = subprocess.run([sys.executable, "-m", "moe_registry.cli", "explain", "gemma-4-26b-a4b-nvfp4", "--device",
                           "h100"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and all(len(line) <= columns for line in lines)
    assert "…" not in proc.stdout and "E128 k8 H2816 I704" in proc.stdout
    assert all(b in proc.stdout for b in ("humming", "trtllm-fp4", "flashinfer-cutlass"))
    # decision first, then the higher-priority backends' reasons, then notes
    assert lines.index(next(l for l in lines if l.startswith("layers"))) < \
        lines.index(next(l for l in lines if l.startswith("higher-priority backends rejected"))) < lines.index("notes:")
    # the decision and what to type fit the first 80x24 screen
    assert lines.index(next(l for l in lines if l.startswith("what to type"))) < 22


def test_a_failed_plan_prints_its_rejection_table_once(capsys):
    from moe_registry.registry import default_registry

    ids = default_registry().ids()
    code = main(["explain", "qwen3-30b-a3b", "--device", "h100", *(x for b in ids for x in ("--forbid", b))])
    out = capsys.readouterr().out
    assert code == 3 and out.count("no backend can run layers") == 1
    assert out.count("forbidden:") == len(ids) and len(out) < 700 * len(ids)  # each backend once
    assert "expert weights per GPU" not in out  # no plan, no memory figure


def test_explain_json_adds_verified_and_faster_rejected(capsys):
    assert main(["explain", "gemma-4-26b-a4b-nvfp4", "--device", "h100", "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["selection"]["backend"] == "humming" and group["verified_on_hardware"] is True
    assert group["faster_rejected"][0] == "trtllm-fp4" and "flashinfer-cutlass" in group["faster_rejected"]


@pytest.mark.parametrize("extra, code, needle", [
    (["--activation", "silu_clamp", "--swiglu-limit", "10"], 0, '"limit": 10.0'),
    (["--activation", "silu_clamp"], 2, "needs --swiglu-limit"),
    (["--activation", "gelu", "--swiglu-limit", "10"], 2, "applies to swigluoai and silu_clamp"),
    (["--device", "sm75", "--dtype", "bf16"], 2, "has no bf16"),
    (["--device", "sm75"], 0, '"dtype": "fp16"'),
])
def test_select_swiglu_limit_and_sm75(capsys, extra, code, needle):
    argv = ["select", "--experts", "8", "--top-k", "2", "--hidden", "256", "--intermediate", "128",
            "--device", "h100", "--json", *extra]
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code and needle in (out if code == 0 else err)


@pytest.mark.parametrize("columns", [80, 120, 250])
def test_backends_matrix_never_cuts_a_cell(columns):
    proc = subprocess.run([sys.executable, "-m", "moe_registry.cli", "backends"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                       "COLUMNS": str(columns)})
    assert proc.returncode == 0 and "…" not in proc.stdout
    assert all(len(line) <= columns for line in proc.stdout.splitlines())
    assert "silu_clamp" in proc.stdout and "gelu_tanh_no_mul" in proc.stdout
