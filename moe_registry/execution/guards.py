"""Input checks that run before any kernel sees a tensor.

A kernel given a wrong shape, dtype, device or layout reads garbage or crashes asynchronously far
from the cause; here every mismatch is a ``ValueError`` with one line naming the tensor, what was
expected and what arrived. The checks read metadata only, except the id-range check, which runs
on every call: it is never skipped on the strength of where the ids came from, because writes
through ``.numpy()`` or ``.data`` change a tensor without bumping its version counter (issue 13).
On the CPU it reads min/max; on a GPU it is a device-side assert (no host sync, capturable in a
CUDA graph).
"""

from __future__ import annotations

from typing import Any

import torch

from ..schemas.layer import LayerSpec
from ..schemas.quant import quant_info
from .weights import ExpertWeights, _device_of, torch_dtype


def _fail(name: str, expected: str, actual: object, layer: LayerSpec | None = None) -> ValueError:
    """One line: ``<tensor> (<layer>): expected <what>, got <what>``."""
    where = f" ({layer.name})" if layer is not None and layer.name else ""
    return ValueError(f"{name}{where}: expected {expected}, got {actual}")


def _same_device(actual: torch.device, expected: torch.device) -> bool:
    # "cuda" (no index) accepts any CUDA device; "cuda:1" only that one.
    if actual.type != expected.type:
        return False
    return expected.index is None or actual.index == expected.index


def _check_tensor(name: str, t: Any, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...],
                  device: torch.device | None, layer: LayerSpec, *, contiguous: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise _fail(name, "a torch.Tensor", type(t).__name__, layer)
    if tuple(t.shape) != shape:
        raise _fail(name, f"shape {list(shape)}", list(t.shape), layer)
    if t.dtype not in dtypes:
        raise _fail(name, "dtype " + " or ".join(str(d) for d in dtypes), t.dtype, layer)
    if device is not None and not _same_device(t.device, device):
        raise _fail(name, f"device {device}", t.device, layer)
    if contiguous and not t.is_contiguous():
        raise _fail(name, f"a contiguous tensor (strides {_contiguous_strides(t.shape)})",
                    f"strides {list(t.stride())}", layer)


def _contiguous_strides(shape: torch.Size) -> list[int]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return strides[::-1]


def check_forward_inputs(layer: LayerSpec, hidden_states: Any, topk_weights: Any, topk_ids: Any, *,
                         device: Any = None, dtype: torch.dtype | None = None,
                         check_id_range: bool = True) -> None:
    """Validate one forward call: ``hidden_states [T, H]`` of ``dtype`` (default the layer's),
    ``topk_weights [T, k]`` float32, ``topk_ids [T, k]`` int32/int64 in ``[0, E_local)``, all
    contiguous and on ``device`` (default: wherever ``hidden_states`` is)."""
    H, k, E = layer.hidden_size, layer.top_k, layer.local_num_experts
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 2:
        got = list(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise _fail("hidden_states", f"a 2-D tensor [T, {H}]", got, layer)
    T = hidden_states.shape[0]
    where = torch.device(device) if device is not None else hidden_states.device
    _check_tensor("hidden_states", hidden_states, (T, H), (dtype or torch_dtype(layer),), where, layer)
    # T consistency and k == top_k are shape checks: report them as such, naming the cause.
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] != T:
            raise _fail(name, f"{T} rows (one per token of hidden_states)", f"{t.shape[0]} rows", layer)
        if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] != k:
            raise _fail(name, f"{k} columns (layer top_k)", f"{t.shape[1]} columns", layer)
    _check_tensor("topk_weights", topk_weights, (T, k), (torch.float32,), where, layer)
    _check_tensor("topk_ids", topk_ids, (T, k), (torch.int32, torch.int64), where, layer)
    if topk_weights.device.type == "cpu" and topk_weights.numel():  # on a GPU this would sync the host
        plain = torch.Tensor.as_subclass(topk_weights, torch.Tensor).detach()
        if not bool(torch.isfinite(plain).all()):
            raise _fail("topk_weights", "finite router weights", "NaN or infinite values", layer)
    if check_id_range and topk_ids.numel():
        check_id_range_of(topk_ids, E, layer)


def check_id_range_of(topk_ids: torch.Tensor, num_experts: int, layer: LayerSpec | None = None) -> None:
    """Ids in ``[0, num_experts)``. On the CPU: a ``ValueError`` naming min and max. On a GPU: a
    device-side assert (``torch._assert_async``), so a forward keeps no host sync and stays
    capturable in a CUDA graph; a bad id then fails the stream ("device-side assert triggered")
    before any later kernel runs, instead of being read as an address."""
    # The tensor's data as a plain torch.Tensor: a subclass may override aminmax, clamp or
    # comparisons (__torch_function__) to pass the check with ids that index out of bounds.
    topk_ids = torch.Tensor.as_subclass(topk_ids, torch.Tensor).detach()
    if topk_ids.device.type == "cpu":
        lo, hi = (int(v) for v in torch.aminmax(topk_ids))  # one pass over the ids
        if lo < 0 or hi >= num_experts:
            raise _fail("topk_ids", f"local expert ids in [0, {num_experts})", f"min {lo} max {hi}", layer)
        return
    # clamp, compare, all, assert: an id is in range iff it equals itself clamped to [0, E-1].
    torch._assert_async((topk_ids.clamp(0, num_experts - 1) == topk_ids).all())


def check_weights(layer: LayerSpec, weights: ExpertWeights, *, dtype: torch.dtype | None = None,
                  device: Any = None) -> None:
    """Validate canonical weights against the layer's local shapes and quantization.

    Unquantized weights must be floating tensors of one dtype (``dtype`` if given); quantized
    weights must be the formats class of ``layer.quant``. All tensors on one device (``device``
    if given).
    """
    if not isinstance(weights, ExpertWeights):
        raise _fail("weights", "an ExpertWeights", type(weights).__name__, layer)
    E, H, I, R = layer.local_num_experts, layer.hidden_size, layer.local_intermediate_size, layer.gemm1_rows
    where = torch.device(device) if device is not None else _device_of(weights.w2)
    expected_shapes = {"w13": (E, R, H), "w2": (E, H, I)}
    # The formats class of the layer's kind (the quant-kind table's format_class), matched by name
    # so the guard needs no import of formats. None: unquantized (or no format yet).
    want_class = quant_info(layer.quant.kind).format_class
    float_dtypes = (dtype,) if dtype is not None else (torch.bfloat16, torch.float16, torch.float32)
    for name in ("w13", "w2"):
        w = getattr(weights, name)
        if want_class is None:  # unquantized
            if not isinstance(w, torch.Tensor):
                raise _fail(name, f"a plain tensor (layer quant {layer.quant.label()})", type(w).__name__, layer)
            _check_tensor(name, w, expected_shapes[name], float_dtypes, where, layer, contiguous=False)
        else:
            if type(w).__name__ != want_class:
                raise _fail(name, f"a {want_class} (layer quant {layer.quant.label()})", type(w).__name__, layer)
            if tuple(w.shape) != expected_shapes[name]:
                raise _fail(name, f"logical shape {list(expected_shapes[name])}", list(w.shape), layer)
            if not _same_device(_device_of(w), where):
                raise _fail(name, f"device {where}", _device_of(w), layer)
            if want_class == "Int4GroupTensor":  # int4 kernels are built for one group size and zero mode
                if w.group_size != layer.quant.group_size:
                    raise _fail(name, f"int4 group size {layer.quant.group_size} (layer quant)", w.group_size, layer)
                if (w.zeros is not None) != layer.quant.zero_point:
                    raise _fail(name, f"zero points {'present' if layer.quant.zero_point else 'absent'} "
                                "(layer quant)", "present" if w.zeros is not None else "absent", layer)
    if want_class is None and weights.w13.dtype != weights.w2.dtype:
        raise _fail("w2", f"the dtype of w13 ({weights.w13.dtype})", weights.w2.dtype, layer)
    for name, shape in (("w13_bias", (E, R)), ("w2_bias", (E, H))):
        b = getattr(weights, name)
        if layer.bias and b is None:
            raise _fail(name, "a bias tensor (layer.bias is True)", None, layer)
        if not layer.bias and b is not None:
            raise _fail(name, "no bias (layer.bias is False)", f"a tensor of shape {list(b.shape)}", layer)
        if b is not None:
            _check_tensor(name, b, shape, (torch.bfloat16, torch.float16, torch.float32), where, layer,
                          contiguous=False)
