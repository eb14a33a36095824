"""The ``humming`` adapter on a GPU: Humming's real MoE kernels against the reference.

Run on the GPU machine with humming-kernels installed (``pip install humming-kernels==0.1.19`` or the
carried wheel)::

    python -m pytest -m gpu tests/gpu/test_humming_gpu.py -q -rs

Order = order of diagnosis: (1) Humming's own compatibility check says what the declaration says
about activations on this GPU (NvFP4 weights: only 16-bit activations on SM90); (2) our converted
weights, dequantized by Humming's own ``HummingWeightSchema.dequant_tensors``, equal our formats'
``dequantize`` (isolates the weight / scale / zero-point layout); (3) the model shapes of issue 9
(Gemma 4 NvFP4, Qwen3-30B-A3B int4 g128 fp16 and NvFP4, Mixtral AWQ int4 with zero points,
gpt-oss-120b MXFP4 swigluoai with biases), T in {1, 7, 64, 512, 4096}, imbalanced routing and
empty experts. The first forward of each freshly built layer JIT-compiles its kernels: its seconds
go into the table (``$HUMMING_GPU_TABLE`` or ``$OUT/humming_gpu_table.txt``).

Tolerance: ``||out - ref|| / ||ref|| <= 2e-2`` (bf16) / ``1e-2`` (fp16), as for Marlin: the reference
runs in float32 on the same dequantized weights, so the difference is Humming's 16-bit rounding of
activations, GEMM outputs and the activation output (~5e-3 each); a layout error is O(1).
"""

from __future__ import annotations

import os
import time

import pytest

torch = pytest.importorskip("torch")
humming = pytest.importorskip("humming")

from moe_registry.backends.humming.kernel import HummingExperts, humming_source  # noqa: E402
from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.execution.weights import random_weights  # noqa: E402
from moe_registry.formats import quantize  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402
from moe_registry.schemas.quant import QuantScheme  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2}
ROWS: list[str] = []


def _row(line: str) -> None:
    ROWS.append(line)
    print(line)


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    if not ROWS:
        return
    print("\n" + "\n".join(ROWS))
    path = os.environ.get("HUMMING_GPU_TABLE") or (os.path.join(os.environ["OUT"], "humming_gpu_table.txt")
                                                  if os.environ.get("OUT") else None)
    if path:
        with open(path, "w") as f:
            f.write(f"# {torch.cuda.get_device_name()} humming-kernels {humming.__version__} torch {torch.__version__}\n")
            f.write("\n".join(ROWS) + "\n")


# --- (1) what Humming itself accepts on this GPU -------------------------------------------------

def test_nvfp4_activation_schemas_on_this_gpu(sm90):
    """The declaration's note: on SM90, group-16 NvFP4 weights are compatible only with 16-bit
    activations (vLLM's e2m1 -> fp8 e4m3 -> e3m4 -> int8 fallback finds nothing lower)."""
    from humming import dtypes
    from humming.schema import HummingInputSchema
    from humming.schema.modelopt import ModeloptNvfp4WeightSchema

    weight = ModeloptNvfp4WeightSchema().to_humming_schema(torch.bfloat16)
    result = {}
    for name, a in (("e2m1", dtypes.float4e2m1), ("e4m3", dtypes.float8e4m3), ("e3m4", dtypes.float8e3m4),
                    ("int8", dtypes.int8), ("bf16", None)):
        result[name] = HummingInputSchema(a_dtype=a).is_compatible_with(weight, torch.bfloat16)
    major, minor = torch.cuda.get_device_capability()
    _row(f"SM{major}{minor} NvFP4 weights x activations compatible: {result}")
    if (major, minor) == (9, 0):
        assert result == {"e2m1": False, "e4m3": False, "e3m4": False, "int8": False, "bf16": True}
    assert result["bf16"]


# --- (2) weight conversion against Humming's own dequantization --------------------------------------

@pytest.mark.parametrize("quant", ["int4_w4a16:g128", "int4_w4a16:g128:zp", "int4_w4a16:gchannel:zp", "nvfp4",
                                   "mxfp4"])
def test_conversion_dequantizes_like_our_format(sm90, quant):
    from humming.schema import BaseWeightSchema

    scheme = QuantScheme.parse(quant)
    w = torch.randn(4, 256, 512, device=sm90) / 512 ** 0.5
    q = quantize(w, scheme)
    source = humming_source(q, scheme.kind, torch.bfloat16)
    schema = BaseWeightSchema.from_config(source.config)
    hschema, tensors = schema.convert_humming(tensors=dict(source.tensors), shape_n_stacks=[256],
                                              shape_k_stacks=[512], param_dtype=torch.bfloat16, num_experts=4)
    theirs = hschema.dequant_tensors(tensors).float()
    ours = q.dequantize(torch.float32)
    err = float((theirs - ours).norm() / ours.norm())
    _row(f"conversion {quant:<24} humming b_dtype {hschema.b_dtype!s:<10} dequant rel diff {err:.2e}")
    # Scales are rounded to bf16 on Humming's side for int4 (param dtype); fp4 scales are exact.
    assert err <= (4e-3 if scheme.kind.value.startswith("int4") else 1e-6)


# --- (3) model shapes --------------------------------------------------------------------------------

MODEL_CASES = [
    ("gemma-4-26b-a4b-nvfp4", None),
    ("qwen3-30b-a3b-gptq-int4", None),
    ("qwen3-30b-a3b", "nvfp4"),
    ("mixtral-8x7b", "int4_w4a16:g128:zp"),
    ("gpt-oss-120b", None),
]
TOKENS = (1, 7, 64, 512, 4096)


@pytest.mark.parametrize("preset,quant", MODEL_CASES, ids=[f"{p}-{q or 'ckpt'}" for p, q in MODEL_CASES])
def test_model_shapes(sm90, preset, quant, make_routing, rel_err):
    layer = plan_model(preset, quant=quant, select=False).layers[0].layer
    dtype = torch.float16 if layer.dtype == "fp16" else torch.bfloat16
    torch.cuda.empty_cache()
    weights = random_weights(layer, device=sm90, dtype=dtype, seed=11)
    t0 = time.perf_counter()
    experts = HummingExperts(layer, weights)
    torch.cuda.synchronize()
    t_build = time.perf_counter() - t0
    ref = ReferenceExperts(layer, weights)
    tol = TOL[dtype]
    case = f"{preset} {layer.quant.label()} {layer.dtype} {layer.describe().split(' single')[0]}"
    gen = torch.Generator(device=sm90).manual_seed(1234)
    failures, worst = [], 0.0
    for T in TOKENS:
        kinds = ("random", "imbalanced", "empty") if T in (64, 512) else ("random",)
        for kind in kinds:
            w, ids = make_routing(T, layer.local_num_experts, layer.top_k, device=sm90, generator=gen, kind=kind)
            w = (w * (0.5 + torch.rand(w.shape, device=sm90, generator=gen))).contiguous()
            x = torch.randn(T, layer.hidden_size, device=sm90, generator=gen).to(dtype)
            out = experts(x, w, ids)
            err = rel_err(out, ref(x, w, ids))
            worst = max(worst, err)
            counts = torch.bincount(ids.flatten().long(), minlength=layer.local_num_experts)
            _row(f"{case:<70} T={T:<5} {kind:<10} rel_err={err:9.3e} tol={tol:.0e} "
                 f"{'ok' if err <= tol else 'FAIL'} experts used {int((counts > 0).sum())}/{layer.local_num_experts}")
            if not err <= tol:
                failures.append(f"T={T} {kind}: {err:.3e}")
    _row(f"{case:<70} build {t_build:.2f}s, first forward (JIT compile) {experts.first_forward_seconds:.2f}s, "
         f"max rel err {worst:.3e}")
    del experts, ref, weights
    torch.cuda.empty_cache()
    assert not failures, f"{case}: " + "; ".join(failures)
