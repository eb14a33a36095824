"""oai-triton-kernels on an SM90 GPU: OpenAI's triton_kernels ``matmul_ogs`` MoE against the reference.

Needs triton_kernels importable (vLLM's vendored ``vllm/third_party/triton_kernels`` or the upstream
package; benchmarks/gpu_session.sh carries the vendored copy). gpt-oss-120b's layer (E=128, top-4,
H=I=2880, MXFP4, swigluoai with gpt-oss's constants and biases), rows interleaved as in the checkpoint
and as canonical ``[gate; up]`` halves (the adapter interleaves them), T in {1, 7, 64, 512}, imbalanced
routing and an empty expert. Tolerance 2e-2 relative: the reference runs in float32 on the same
dequantized weights; the kernel rounds the activations, the router weights (bf16, as vLLM passes them)
and the intermediate to bf16.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moe_registry.backends.oai_triton import locate  # noqa: E402
from moe_registry.backends.reference.kernel import ReferenceExperts  # noqa: E402
from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402
from moe_registry.execution.weights import random_weights  # noqa: E402
from moe_registry.planner import plan_model  # noqa: E402

pytestmark = pytest.mark.gpu
TOL = 2e-2


@pytest.fixture(scope="module")
def gpt_oss(sm90):
    if locate()[0] is None:
        pytest.skip(locate()[2])
    layer = plan_model("gpt-oss-120b", select=False).layers[0].layer.shape_key()
    return layer, random_weights(layer, device=sm90, seed=1)


@pytest.mark.parametrize("interleaved", [True, False])
def test_matches_the_reference(sm90, gpt_oss, interleaved):
    from moe_registry.backends.oai_triton.kernel import OaiTritonExperts

    layer, weights = gpt_oss
    if not interleaved:  # the same maths on [gate; up] halves: de-interleave the rows
        params = layer.swigluoai.model_copy(update={"interleaved": False})
        layer = layer.replace(activation_params=params)
        I = layer.intermediate_size
        index = torch.cat([torch.arange(0, 2 * I, 2), torch.arange(1, 2 * I, 2)]).to(sm90)
        w13 = type(weights.w13)(data=weights.w13.data.index_select(-2, index),
                                scale=weights.w13.scale.index_select(-2, index))
        weights = type(weights)(w13=w13, w2=weights.w2, w13_bias=weights.w13_bias.index_select(-1, index),
                                w2_bias=weights.w2_bias)
    experts = OaiTritonExperts(layer, weights)
    reference = ReferenceExperts(layer, weights)
    for T, kind in ((1, "random"), (7, "imbalanced"), (64, "empty"), (512, "imbalanced")):
        gen = torch.Generator(device=sm90).manual_seed(T)
        w, ids = routing_pattern(T, layer.num_experts, layer.top_k, device=sm90, kind=kind, generator=gen)
        x = torch.randn(T, layer.hidden_size, device=sm90, generator=gen).to(torch.bfloat16)
        out = experts(x, w, ids)
        ref = reference(x, w, ids)
        assert out.shape == (T, layer.hidden_size) and out.dtype == torch.bfloat16
        err = relative_error(out, ref)
        print(f"oai-triton-kernels gpt-oss-120b interleaved={interleaved} T={T} {kind}: rel err {err:.2e}")
        assert err <= TOL, (T, kind, err)


def test_no_host_sync_in_a_forward(sm90, gpt_oss, no_host_sync):
    from moe_registry.backends.oai_triton.kernel import OaiTritonExperts

    layer, weights = gpt_oss
    experts = OaiTritonExperts(layer, weights)
    w, ids = routing_pattern(16, layer.num_experts, layer.top_k, device=sm90)
    x = torch.randn(16, layer.hidden_size, device=sm90).to(torch.bfloat16)
    experts(x, w, ids)  # compile first
    no_host_sync(experts, x, w, ids)
