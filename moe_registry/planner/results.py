"""What planning gives back: the plan (:class:`ModelPlan` of :class:`LayerPlan`, grouped into
:class:`LayerGroup`) or a one-line :class:`PlanError` subclass naming the file, key or layer at fault."""

# No `from __future__ import annotations`: string annotations cost a compile() each when pydantic or
# NamedTuple reads them at import, which explain's start-up counts (issue 20).

from pydantic import BaseModel, ConfigDict

from ..memory import MemoryFit
from ..quant_config import PlanError
from ..schemas.device import DeviceSpec
from ..schemas.layer import LayerSpec, ParallelConfig
from ..schemas.selection import Rejection, Selection

# --- Errors ----------------------------------------------------------------------------------


class UnknownPreset(PlanError):
    """Neither a bundled preset, a preset's model id, nor an existing path."""


class ConfigNotFound(PlanError):
    """A path that does not exist, or a directory without ``config.json``."""


class MalformedConfig(PlanError):
    """Not JSON, not an object, or a required key missing or of the wrong type."""


class NotAMoEModel(PlanError):
    """The config declares no routed experts, or no layer is a MoE layer."""


class ParallelismError(PlanError):
    """TP does not divide the expert width, or EP does not divide the expert count."""


class InvalidLayer(PlanError):
    """A MoE layer the schema rejects for another reason (top-k above the expert count, ...)."""


class SelectionUnavailable(PlanError):
    """``select=True`` but ``moe_registry.selection`` is not there."""


# --- Results ---------------------------------------------------------------------------------


class LayerPlan(BaseModel):
    """One MoE layer and the backend chosen for it (``selection`` None when planned with
    ``select=False``, or when no backend can run it: then ``error`` is the one-line message of the
    ``NoEligibleBackend`` and ``rejections`` every reason it carried)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: LayerSpec
    selection: Selection | None = None
    error: str | None = None
    rejections: tuple[Rejection, ...] = ()


class LayerGroup(BaseModel):
    """Consecutive MoE layers with the same shape key (hence the same selection)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    indices: tuple[int, ...]
    names: tuple[str, ...]
    layer: LayerSpec  # the shape key: name and index cleared
    selection: Selection | None = None
    error: str | None = None
    rejections: tuple[Rejection, ...] = ()

    @property
    def first(self) -> int:
        return self.indices[0]

    @property
    def last(self) -> int:
        return self.indices[-1]

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def contiguous(self) -> bool:
        return self.last - self.first + 1 == self.count

    def label(self) -> str:
        """``layer 5``, ``layers 3-60 (58)``; hybrid models list a non-contiguous set as
        ``layers 1-51 (23 of them)``."""
        if self.count == 1:
            return f"layer {self.first}"
        if self.contiguous:
            return f"layers {self.first}-{self.last} ({self.count})"
        return f"layers {self.first}-{self.last} ({self.count} of them)"


class ModelPlan(BaseModel):
    """Every MoE layer of one model under one device and parallel layout."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str  # preset name, or the model directory's name
    model_id: str | None = None  # Hugging Face id when known
    source: str  # "preset gemma-4-26b-a4b" or the config path
    provenance: str | None = None  # a preset's _source
    device: DeviceSpec | None = None  # None: this machine (selection detects it)
    parallel: ParallelConfig = ParallelConfig()
    quantization: str = "none"  # one-line summary of the quantization config (or the override)
    # What an engine reads off the checkpoint to pick its kernels (engines/answer.py): the config's
    # model_type and its quantization config's format ("modelopt", "fp8", "gptq", ...; None: unquantized).
    model_type: str | None = None
    quant_method: str | None = None
    fp8_static_activations: bool = False  # FP8 with activation_scheme "static" (vLLM's FP8 oracle reads it)
    num_hidden_layers: int
    layers: tuple[LayerPlan, ...]
    notes: tuple[str, ...] = ()
    memory: MemoryFit | None = None  # whole-model expert weights per GPU vs the device (None: select=False)

    @property
    def layer_specs(self) -> tuple[LayerSpec, ...]:
        return tuple(p.layer for p in self.layers)

    def groups(self) -> tuple[LayerGroup, ...]:
        """Runs of consecutive MoE layers with the same ``shape_key()`` (and so the same backend).
        Computed once per plan (renderers ask for it many times); the cache is keyed by the layers
        tuple itself, so a ``model_copy`` with other layers never sees stale groups."""
        cached = self.__dict__.get("_groups_cache")
        if cached is not None and cached[0] is self.layers:
            return cached[1]
        groups = self._group_layers()
        self.__dict__["_groups_cache"] = (self.layers, groups)
        return groups

    def _group_layers(self) -> tuple[LayerGroup, ...]:
        out: list[LayerGroup] = []
        run: list[tuple[LayerPlan, LayerSpec]] = []

        def close() -> None:
            if run:
                head, key = run[0]
                # A planned layer always carries its index and name (the planner sets both).
                out.append(LayerGroup(indices=tuple(p.layer.index for p, _ in run),  # type: ignore[misc]
                                      names=tuple(p.layer.name for p, _ in run),  # type: ignore[misc]
                                      layer=key, selection=head.selection, error=head.error,
                                      rejections=head.rejections))
                run.clear()

        for plan in self.layers:
            key = plan.layer.shape_key()
            if run and key != run[0][1]:
                close()
            run.append((plan, key))
        close()
        return tuple(out)
