"""Runs SGLang 0.5.23's own MoE runner resolution for a list of cases, in a child process of the
interpreter that has SGLang installed (``python -m moe_registry.engines.sglang._worker`` reads one
JSON request on stdin and writes one JSON answer on stdout).

Nothing of SGLang's choice is restated here: the worker builds SGLang's ``ServerArgs`` from the
command line a user would type, lets ``resolve_once()`` run the whole resolution pipeline (model
overrides, post-process passes), publishes the result as the scheduler does, seeds the MoE flags
(``initialize_moe_config``), builds SGLang's quantization config from the checkpoint with the
model loader's own function, and constructs each MoE layer with the model's own MoE block class
(on the meta device), reading ``FusedMoE.runner_backend`` back. What had to be faked to do that on
a CPU is :data:`FAKES`, applied before SGLang is imported; each is needed (removing it makes the
run fail or changes an answer for a CPU-only reason).

sglang and torch are imported inside functions only: the package's layer test imports this module
without them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import io
import json
import logging
import os
import sys
import tempfile
import time
import types
from typing import Any

FAKES = (
    "F1 torch.cuda reports one GPU of the target's compute capability, name and memory "
    "(is_available, device_count, get_device_capability, get_device_name, mem_get_info; is_initialized=True so "
    "SGLang reads the capability from torch rather than NVML): the premise of the run",
    "F2 torch.version.cuda = '13.0' (SGLang 0.5.23 pins the cu13 builds of flashinfer, humming and cutlass-dsl); "
    "its SM probes require CUDA >= 12.8 for Blackwell (utils/common.py _check_cuda_device_version)",
    "F3 import-only stand-ins for the packages sgl_kernel (sglang-kernel 0.4.10), deep_gemm (sgl-deep-gemm 0.2.3.post2) "
    "and torchvision: required dependencies of SGLang 0.5.23 whose builds load CUDA libraries and cannot load "
    "against CPU torch; SGLang imports them at module level when is_cuda(), and enables DeepGEMM when `import "
    "deep_gemm` succeeds, as on a GPU box (layers/deep_gemm_wrapper/configurer.py L32-52). sgl_kernel's own Python "
    "submodules (scalar_type, which the Marlin checks read) load for real from the installed sglang-kernel wheel; "
    "no kernel is called",
    "F4 MoE blocks are built on torch's meta device (no weight memory), in the model's dtype as the loader does "
    "(model_loader/loader.py L838 set_default_torch_dtype)",
    "F5 published as rank 0 of the layout (runtime_context.publish with SpawnRanks(world_rank=0)); no process groups",
    "F6 only where a MoE block reads the expert-parallel process group itself (Nemotron-H's NemotronHMoE: rank() and "
    "size()): a stand-in group of rank 0 and the EP width, stated with get_parallel().override(moe_ep_group=...), "
    "the override SGLang's own error message names",
)
ASSUMPTIONS = (
    "SGLang 0.5.23 executed on a CPU with the GPU faked (F1-F6), in the environment `pip install sglang==0.5.23` "
    "makes: sglang-kernel 0.4.10 is installed, and with it OpenAI's triton_kernels package (so gpt_oss.py picks "
    "triton_kernel on Hopper at EP1); nvidia-smi is absent, so the driver version is unknown and gpt_oss.py's "
    "Blackwell driver >= 595 fallback to triton does not fire",
)
_STUBBED = ("sgl_kernel", "deep_gemm", "torchvision")
_MOE_WORDS = ("moe", "runner", "expert", "marlin", "trtllm", "cutlass", "triton", "deepgemm", "deep_gemm")


class _StubType(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (), {})


def _probing() -> bool:
    """True inside importlib.util.find_spec (transformers' availability probes): the stand-ins
    serve import statements only, so transformers still sees torchvision as absent."""
    frame: Any = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "find_spec" and frame.f_globals.get("__name__") == "importlib.util":
            return True
        frame = frame.f_back
    return False


def _installed_dir(package: str) -> str | None:
    """Where an installed package's files are, without importing it (its __init__ loads CUDA)."""
    for entry in sys.path:
        candidate = os.path.join(entry or ".", package)
        if os.path.isfile(os.path.join(candidate, "__init__.py")):
            return candidate
    return None


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The stand-in packages of F3: the package itself is a stand-in, a submodule whose .py file
    the installed package has is imported for real (through the stand-in's __path__)."""

    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        if top not in _STUBBED or _probing():
            return None
        if fullname != top:
            root = _installed_dir(top)
            relative = os.path.join(*fullname.split(".")[1:])
            if root and (os.path.isfile(os.path.join(root, relative + ".py"))
                         or os.path.isfile(os.path.join(root, relative, "__init__.py"))):
                return None  # the real file, found by the path finder in the stand-in's __path__
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        root = _installed_dir(module.__name__) if "." not in module.__name__ else None
        module.__path__ = [root] if root else []


def apply_fakes(device: dict[str, Any]) -> None:
    """F1-F3, before SGLang is imported (its probes are lru_cached at first call)."""
    import torch

    cap = (device["sm"] // 10, device["sm"] % 10)
    device_name = device["name"]
    memory = int(device["memory_gb"] * (1 << 30))
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda device=None: cap
    torch.cuda.get_device_name = lambda device=None: device_name
    torch.cuda.mem_get_info = lambda device=None: (memory, memory)
    torch.cuda.is_initialized = lambda: True
    torch.version.cuda = "13.0"
    sys.meta_path.insert(0, _Stubs())


class _Collect(logging.Handler):
    """SGLang's own log lines about the MoE choice (INFO and above that mention it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed log call in SGLang must not end the case
            return
        if record.module == "registry" and "import error" in text:  # SGLang skipping models it cannot import
            return
        if any(w in text.lower() for w in _MOE_WORDS) and len(self.lines) < 40:
            line = f"{record.levelname}: {text.splitlines()[0][:300]} ({record.module}.py L{record.lineno})"
            if line not in self.lines:
                self.lines.append(line)


def _where(qualname: str) -> str | None:
    """file:line of a resolution step (post-process pass or model override) named in a declaration."""
    name = qualname.split(".")[-1]
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("sglang.srt.arg_groups") or module is None:
            continue
        fn = getattr(module, name, None)
        if callable(fn):
            try:
                path = inspect.getsourcefile(fn) or ""
                line = inspect.getsourcelines(fn)[1]
            except (OSError, TypeError):
                continue
            return f"{path[path.index('sglang/'):] if 'sglang/' in path else path} L{line}"
    return None


def _failure(e: BaseException) -> str:
    """``Type: first line (at sglang/...py Lnnn)``: the error and the line of SGLang's code that raised it."""
    import traceback

    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if "sglang/" in frame.filename:
            where = f" (at {frame.filename[frame.filename.rindex('sglang/'):]} L{frame.lineno})"
            break
    text = str(e).splitlines()[0][:400] if str(e) else ""
    return f"{type(e).__name__}: {text}{where}"


def _checkpoint_dir(case: dict[str, Any]) -> str:
    root = tempfile.mkdtemp(prefix="moe-registry-sglang-")
    for file, content in case["files"].items():
        with open(os.path.join(root, file), "w", encoding="utf-8") as f:
            json.dump(content, f)
    return root


# model_type of the text config -> (module, MoE block class). The block is SGLang's own: it builds
# FusedMoE with the model's activation, gating, bias, routing and shared-expert fusion.
BLOCKS: dict[str, tuple[str, str]] = {
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeSparseMoeBlock"),
    "deepseek_v3": ("deepseek_v2", "DeepseekV2MoE"),
    "kimi_k2": ("deepseek_v2", "DeepseekV2MoE"),
    "gpt_oss": ("gpt_oss", "GptOssSparseMoeBlock"),
    "gemma4_text": ("gemma4_causal", "Gemma4MoE"),
    "mixtral": ("mixtral", "MixtralMoE"),
    "llama4_text": ("llama4", "Llama4MoE"),
    "glm4_moe": ("glm4_moe", "Glm4MoeSparseMoeBlock"),
    "nemotron_h": ("nemotron_h", "NemotronHMoE"),
}
# model_type -> the config method that gives a layer's own config (as the model's decoder layer calls it).
LAYER_CONFIG = {"nemotron_h": "get_nemotron_h_config_for_layer"}


class _StandInGroup:
    """F6: what NemotronHMoE reads of the EP group (``.device_group.rank()`` / ``.size()``)."""

    def __init__(self, size: int) -> None:
        self.world_size, self.rank_in_group, self.device_group = size, 0, self

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return self.world_size


def _ep_group_scope() -> Any:
    """The F6 override where no EP group was written (always, here); a no-op scope otherwise."""
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    try:
        if parallel.moe_ep_group is not None:
            return contextlib.nullcontext()
    except Exception:
        pass
    return parallel.override(moe_ep_group=_StandInGroup(int(parallel.moe_ep_size)))


def _build_block(model_type: str, config: Any, quant_config: Any, layer_id: int, prefix: str, dtype: Any) -> None:
    import torch
    from sglang.srt.model_loader.utils import set_default_torch_dtype  # as the model loader builds a model

    module, name = BLOCKS[model_type]
    block = getattr(importlib.import_module(f"sglang.srt.models.{module}"), name)
    if model_type in LAYER_CONFIG:
        config = getattr(config, LAYER_CONFIG[model_type])(layer_id)
    pool = {"layer_id": layer_id, "layer_idx": layer_id, "config": config, "quant_config": quant_config, "prefix": prefix,
            "hidden_size": config.hidden_size, "reduce_results": False,
            "num_experts": getattr(config, "num_local_experts", None), "top_k": getattr(config, "num_experts_per_tok", None),
            "intermediate_size": getattr(config, "intermediate_size", None)}
    accepted = inspect.signature(block.__init__).parameters
    scope = _ep_group_scope() if model_type in LAYER_CONFIG else contextlib.nullcontext()
    with scope, set_default_torch_dtype(dtype), torch.device("meta"):
        block(**{k: v for k, v in pool.items() if k in accepted})


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One model x layout x command line: the config-time answer and each MoE layer's runner."""
    from sglang.srt.arg_groups.overrides import model_config_of, resolution_result
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.server_args import prepare_server_args

    out: dict[str, Any] = {"config": None, "layers": [], "error": None, "log": [], "seconds": {}}
    plugin = sys.modules.get("moe_registry.engines.sglang.plugin")
    if plugin is not None:  # loaded by load_plugins(): one report per case
        plugin.reset()
    collect = _Collect()
    logging.getLogger("sglang").addHandler(collect)
    seen: list[Any] = []
    original = FusedMoE.__init__

    def record(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        seen.append(self)

    started = time.perf_counter()
    try:
        args = ["--model-path", _checkpoint_dir(case), *case["args"]]
        server_args = prepare_server_args(args)
        server_args.resolve_once()
        steps = [{"source": src, "where": _where(src), "fields": {k: str(v) for k, v in fields.items()}}
                 for src, fields in server_args._resolved_overrides
                 if any(k in ("moe_runner_backend", "quantization", "moe_a2a_backend") for k in fields)]
        out["config"] = {"moe_runner_backend": str(resolution_result(server_args, "moe_runner_backend")),
                         "quantization": resolution_result(server_args, "quantization"),
                         "moe_a2a_backend": str(resolution_result(server_args, "moe_a2a_backend")), "steps": steps}
        from sglang.srt.configs.load_config import LoadConfig
        from sglang.srt.layers.moe import initialize_moe_config
        from sglang.srt.model_loader.loader import _get_quantization_config
        from sglang.srt.runtime_context import SpawnRanks, publish

        publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, dp_rank=None, gpu_id=0))
        initialize_moe_config()
        model_config = model_config_of(server_args)
        quant_config = _get_quantization_config(model_config, LoadConfig(load_format="dummy"))
        text = model_config.hf_text_config
        if text.model_type not in BLOCKS:
            raise LookupError(f"no MoE block known for model_type {text.model_type!r} (known: {', '.join(sorted(BLOCKS))})")
        FusedMoE.__init__ = record
        out["seconds"] = {"resolve": round(time.perf_counter() - started, 4)}
        started = time.perf_counter()
        for index, name in case["layers"]:
            seen.clear()
            entry: dict[str, Any] = {"index": index, "name": name}
            prefix = name[: -len(".experts")] if name.endswith(".experts") else name
            try:
                _build_block(text.model_type, text, quant_config, index, prefix, model_config.dtype)
                layer = seen[-1]
                backend = layer.runner_backend
                entry.update(runner=getattr(backend, "value", str(backend)), method=type(layer.quant_method).__name__,
                             local_experts=layer.num_local_experts,
                             intermediate=layer.intermediate_size_per_partition, hidden=layer.hidden_size)
            except Exception as e:  # SGLang refuses this layer: its message is the answer
                entry["error"] = _failure(e)
            out["layers"].append(entry)
        out["seconds"]["layers"] = round(time.perf_counter() - started, 4)
    except Exception as e:  # SGLang refuses the configuration at resolution
        out["error"] = _failure(e)
    finally:
        FusedMoE.__init__ = original
        logging.getLogger("sglang").removeHandler(collect)
    out["log"] = collect.lines
    if plugin is not None:
        out["plugin"] = {"reports": [{"model": r.model, "rows": [list(x) for x in r.rows], "expected": r.expected,
                                      "printed": r.printed, "text": plugin.render(r)} for r in plugin.REPORTS],
                         "added_s": round(plugin._STATE["added_s"], 4),
                         "choice": None if plugin._STATE["choice"] is None else {
                             "runner": plugin._STATE["choice"].runner, "why": plugin._STATE["choice"].why}}
    return out


def main() -> None:
    request = json.load(sys.stdin)
    apply_fakes(request["device"])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import sglang

    if request.get("load_plugins"):  # as Engine / the scheduler do: entry points of sglang.srt.plugins
        from sglang.srt.plugins import load_plugins

        load_plugins()
    answers = []
    for case in request["cases"]:
        with contextlib.redirect_stdout(io.StringIO()):  # stdout carries the one JSON answer
            answers.append(run_case(case))
    json.dump({"version": getattr(sglang, "__version__", None), "fakes": FAKES, "assumptions": ASSUMPTIONS,
               "answers": answers}, sys.stdout)


if __name__ == "__main__":
    main()
