"""The probe's worker: runs one backend's combinations and streams one JSON line per result.

``python -m moe_registry.verify.worker JOB.json [N]`` runs combinations ``N..`` of the job
written by ``moe_registry.verify.supervisor`` (one backend, its adapter ``module:Class``, the
combinations in order) and writes, on its own stdout, one JSON object per line:

- ``{"event": "hello", ...}`` once the adapter class is imported (or ``"error"`` if it is not);
- ``{"event": "result", "index": i, "status": ..., ...}`` per finished combination, in order;
- ``{"event": "exit", "reason": "cuda_context"}`` just before exiting after a CUDA error (the
  context is unusable; the parent starts a fresh worker at the next combination).

Anything else the adapter prints goes to stderr: the protocol has a file descriptor of its own.
The parent treats a worker that dies without a result for the combination in flight (segfault,
``os.abort``, a kernel that kills the process) as "raised: worker crashed" for that combination.

Each combination builds random weights of its layer (quantized with the layer's scheme; cached
across activations of the same shape), random hidden states and routing, constructs the adapter
directly (no selection: undeclared combinations are attempted too), runs ``forward`` and compares
with the oracle: ``ReferenceExperts`` on the same weights, or, for the ``reference`` backend
itself, an independent float64 dense evaluation (``oracle.dense_oracle``).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import zlib
from typing import Any, Callable

from ..errors import cuda_context_broken, one_line
from ..execution import load_adapter
from .oracle import compare, dense_oracle

EXIT_CUDA_CONTEXT = 3  # the worker stopped after a CUDA error; restart it at the next combination

MESSAGE_LIMIT = 400  # characters of an exception in a result line

Emit = Callable[[dict[str, Any]], None]


# --- Running combinations -----------------------------------------------------------------------

class _Context:
    """Per-worker state: the device, and small caches (same key, same seed, same data) of weights,
    their float32 dequantization (the oracles' input) and inputs. Combinations arrive ordered by
    scheme, then weight shape, then activation, so a few entries cover every reuse."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self._weights: dict[str, Any] = {}
        self._plain: dict[str, Any] = {}
        self._inputs: dict[str, Any] = {}

    @staticmethod
    def _put(cache: dict[str, Any], key: str, value: Any, size: int) -> Any:
        while len(cache) >= size:
            cache.pop(next(iter(cache)))
        cache[key] = value
        return value

    @staticmethod
    def weights_key(layer: Any) -> str:
        return (f"E{layer.local_num_experts} R{layer.gemm1_rows} H{layer.hidden_size} "
                f"I{layer.local_intermediate_size} {layer.quant.label()} {layer.dtype} bias{layer.bias}")

    def weights(self, layer: Any) -> Any:
        from moe_registry.execution.weights import random_weights, torch_dtype

        key = self.weights_key(layer)
        if key not in self._weights:
            seed = zlib.crc32(key.encode()) & 0x7FFFFFFF
            self._put(self._weights, key,
                      random_weights(layer, device=self.device, dtype=torch_dtype(layer), seed=seed), 4)
        return self._weights[key]

    def plain(self, layer: Any) -> Any:
        """The layer's weights dequantized to float32 (what the reference computes with)."""
        key = self.weights_key(layer)
        if key not in self._plain:
            self._put(self._plain, key, self.weights(layer).dequantized(self.torch.float32), 2)
        return self._plain[key]

    def inputs(self, layer: Any, tokens: int) -> tuple[Any, Any, Any]:
        from moe_registry.execution.routing import route
        from moe_registry.execution.weights import torch_dtype

        torch = self.torch
        key = f"T{tokens} H{layer.hidden_size} E{layer.num_experts} k{layer.top_k} {layer.dtype}"
        if key not in self._inputs:
            gen = torch.Generator(device=self.device).manual_seed(zlib.crc32(key.encode()) & 0x7FFFFFFF)
            x = torch.randn(tokens, layer.hidden_size, generator=gen, device=self.device).to(torch_dtype(layer))
            logits = torch.randn(tokens, layer.num_experts, generator=gen, device=self.device)
            topk_weights, topk_ids = route(logits, layer)
            self._put(self._inputs, key, (x, topk_weights, topk_ids), 4)
        return self._inputs[key]

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def run_combo(ctx: _Context, cls: type, combo: dict[str, Any], oracle: str) -> dict[str, Any]:
    """One combination -> a result dict (status, errors, message). Never raises; ``fatal`` marks a
    CUDA error after which this process must not run anything else."""
    from moe_registry.schemas.layer import LayerSpec

    layer = LayerSpec.model_validate(combo["layer"])
    tokens = int(combo["tokens"])
    try:
        weights = ctx.weights(layer)
        x, topk_weights, topk_ids = ctx.inputs(layer, tokens)
    except Exception as exc:  # the format cannot represent these weights: nothing to run
        line = one_line(exc, limit=MESSAGE_LIMIT)
        if cuda_context_broken(exc):
            return {"status": "raised", "message": "while building inputs: " + line, "fatal": True}
        return {"status": "skipped", "message": "cannot build the layer's weights: " + line}
    try:
        experts = cls(layer, weights, pad_hidden_to=combo.get("pad_hidden_to"),
                      pad_intermediate_to=combo.get("pad_intermediate_to"))
        out = experts(x, topk_weights, topk_ids)
        ctx.sync()  # an asynchronous kernel error belongs to this combination, not the next
    except Exception as exc:
        return {"status": "raised", "message": one_line(exc, limit=MESSAGE_LIMIT),
                "fatal": cuda_context_broken(exc)}
    finally:
        experts = None  # noqa: F841  (free the adapter's prepared weights before the oracle)
    try:
        plain = ctx.plain(layer)
        if oracle == "float64":
            ref = dense_oracle(layer, plain, x, topk_weights, topk_ids)
        else:
            from moe_registry.backends.reference.kernel import ReferenceExperts

            # The reference on the same weights: it computes with their float32 dequantization,
            # which is cached here and handed over as plain weights (the same numbers it would
            # dequantize itself, without paying for it per activation).
            ref = ReferenceExperts(layer.replace(quant={"kind": "bf16"}), plain)(x, topk_weights, topk_ids)
        ctx.sync()
    except Exception as exc:
        line = one_line(exc, limit=MESSAGE_LIMIT)
        if cuda_context_broken(exc):
            return {"status": "raised", "message": "the oracle failed after this backend ran: " + line,
                    "fatal": True}
        return {"status": "skipped", "message": "the oracle failed: " + line}
    try:
        return compare(out, ref, layer, tokens, float(combo["tolerance"]))
    except Exception as exc:
        return {"status": "raised", "message": "reading the output failed: " + one_line(exc, limit=MESSAGE_LIMIT),
                "fatal": cuda_context_broken(exc)}


def run_job(job: dict[str, Any], start: int, emit: Emit, *, stop_on_cuda_error: bool = True) -> int:
    """Run ``job["combos"][start:]``, emitting one event per result. Returns the exit code:
    0 when done, ``EXIT_CUDA_CONTEXT`` when stopped after a CUDA error."""
    try:
        import torch

        cls = load_adapter(job["backend"], job["adapter"])
    except BaseException as exc:  # an ImportError, or a library that fails to load
        emit({"event": "hello", "error": one_line(exc, limit=MESSAGE_LIMIT)})
        return 0
    hello: dict[str, Any] = {"event": "hello", "pid": os.getpid(), "torch": torch.__version__,
                             "cuda": torch.version.cuda}
    if job["device"] == "cuda":
        try:
            hello["card"] = torch.cuda.get_device_name(0)
        except Exception as exc:
            emit({"event": "hello",
                  "error": "CUDA is not usable in the worker: " + one_line(exc, limit=MESSAGE_LIMIT)})
            return 0
    emit(hello)
    ctx = _Context(job["device"])
    # On the CPU the combinations are small: one intra-op thread. Several threads gain little here
    # and, on a shared machine, OpenMP's spinning barriers make each op ~10x slower under load.
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("MOE_REGISTRY_PROBE_THREADS", "1"))))
    try:
        for combo in job["combos"][start:]:
            t0 = time.perf_counter()
            result = run_combo(ctx, cls, combo, job["oracle"])
            fatal = bool(result.pop("fatal", False))
            emit({"event": "result", "index": combo["index"], "seconds": round(time.perf_counter() - t0, 4),
                  **result})
            if fatal and stop_on_cuda_error:
                emit({"event": "exit", "reason": "cuda_context"})
                return EXIT_CUDA_CONTEXT
    finally:
        torch.set_num_threads(threads)
    return 0


def main(argv: list[str] | None = None) -> int:
    # Internal protocol, not a user command (those are all in cli.py): JOB_FILE [FIRST_COMBINATION].
    args = sys.argv[1:] if argv is None else argv
    job_path, start = args[0], int(args[1]) if len(args) > 1 else 0
    # The protocol gets a descriptor of its own; fd 1 (and sys.stdout) become stderr, so whatever a
    # kernel library prints cannot corrupt the stream.
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    faulthandler.enable(file=sys.stderr)  # a segfault or abort leaves its cause on stderr

    def emit(event: dict[str, Any]) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    code = run_job(job, start, emit)
    protocol.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
