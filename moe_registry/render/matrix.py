"""The capability matrix (`moe-registry backends`): JSON, Markdown (docs/capability-matrix.md) and rich tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..schemas.activation import Activation
from ..schemas.capability import BackendCapability
from ..schemas.device import PRESETS, DeviceSpec
from ..schemas.quant import QuantKind
from .selection import JSON_SCHEMA_VERSION

if TYPE_CHECKING:
    from rich.console import Console

# --- Capability matrix -----------------------------------------------------------------------------

_FAMILIES = (("sm80", 80), ("sm89", 89), ("sm90", 90), ("sm100", 100), ("sm103", 103), ("sm120", 120), ("cpu", None))


def _device_for(tag: str) -> DeviceSpec:
    return PRESETS[tag]


def quant_cell(decl: BackendCapability, kind: QuantKind) -> str:
    supports = decl.quant_support(kind)
    if not supports:
        return "-"
    tags = [tag for tag, _ in _FAMILIES
            if any(rule.matches(_device_for(tag)) for rule in decl.devices)
            and any(s.devices is None or any(r.matches(_device_for(tag)) for r in s.devices) for s in supports)]
    marks = []
    if any(s.dequantized_at_load for s in supports):
        marks.append("dequant")
    if not any(s.adapter_implemented for s in supports):
        marks.append("no adapter")
    elif not all(s.adapter_implemented for s in supports):
        marks.append("native path: no adapter")
    return ",".join(tags) + (f" ({', '.join(marks)})" if marks else "")


def activation_cell(decl: BackendCapability, act: Activation) -> str:
    impl = decl.activations.get(act)
    if impl is None:
        return "-"
    return "approx" if impl.fidelity == "approximate" else "yes"


def matrix_json(declarations: Iterable[BackendCapability], device: DeviceSpec | None = None) -> dict[str, Any]:
    out = []
    for d in declarations:
        entry = d.model_dump(mode="json")
        if device is not None:
            entry["runs_on_device"] = any(r.matches(device) for r in d.devices)
            entry["quant_on_device"] = sorted({s.kind.value for s in d.quant
                                               if s.devices is None or any(r.matches(device) for r in s.devices)})
        out.append(entry)
    return {"schema_version": JSON_SCHEMA_VERSION, "device": device.model_dump(mode="json") if device else None,
            "backends": out}


def matrix_markdown(declarations: Iterable[BackendCapability], device: DeviceSpec | None = None) -> str:
    decls = [d for d in declarations if device is None or any(r.matches(device) for r in d.devices)]
    where = f" on {device.label()}" if device else ""
    out = [f"# Capability matrix{where}", "",
           "Generated from the backend declarations by `moe-registry backends --markdown`; do not edit by hand.",
           "`yes` exact, `approx` the kernel runs an approximation (see notes), `-` not declared. Quant cells list the",
           "device families where the scheme runs; `dequant`: weights dequantized to 16-bit at load; `no adapter`:",
           "the kernel runs it (cited) but moe-registry cannot convert its weights yet.", "",
           "## Activations", "", "| backend | " + " | ".join(a.value for a in Activation) + " |",
           "|---|" + "---|" * len(Activation)]
    for d in decls:
        out.append(f"| `{d.id}` | " + " | ".join(activation_cell(d, a) for a in Activation) + " |")
    out += ["", "## Quantization schemes", "", "| backend | " + " | ".join(k.value for k in QuantKind) + " |",
            "|---|" + "---|" * len(QuantKind)]
    for d in decls:
        out.append(f"| `{d.id}` | " + " | ".join(quant_cell(d, k) for k in QuantKind) + " |")
    out += ["", "## Backends", ""]
    for d in decls:
        out += _backend_markdown(d)
    return "\n".join(out) + "\n"


def _sglang_flags(d: BackendCapability) -> str:
    """SGLang names its runner per quant method: each flag with the kinds it serves (``-``: none)."""
    kinds: dict[str, list[str]] = {}
    for q in d.quant:
        flag = d.engines.sglang_flag(q.kind)
        if flag and q.kind.value not in kinds.setdefault(flag, []):
            kinds[flag].append(q.kind.value)
    if not kinds:
        return "`-`"
    if len(kinds) == 1:
        return f"`{next(iter(kinds))}`"
    return ", ".join(f"`{f}` ({'/'.join(k)})" for f, k in kinds.items())


def _backend_markdown(d: BackendCapability) -> list[str]:
    out = [f"### `{d.id}`: {d.name}", "", d.description, "",
           f"- kernel: `{d.kernel}`; provider: {d.provider}",
           f"- devices: {' or '.join(r.describe() for r in d.devices)}; hidden-state dtypes: {', '.join(d.dtypes)}",
           f"- engines: vLLM `{d.engines.vllm or '-'}`, SGLang {_sglang_flags(d)}, TRT-LLM "
           f"`{d.engines.trtllm or '-'}`",
           "- priority: " + ", ".join(f"{f.value} {p}" for f, p in d.priority.items())
           + "".join(f"; {o.family.value} {o.priority} on {' or '.join(r.describe() for r in o.devices)}"
                     + (f" when {o.when.describe()}" if o.when.describe() != "always" else "")
                     for o in d.priority_overrides)]
    for dtype_rule in d.dtype_devices:
        out.append(f"- {dtype_rule.dtype} hidden states only on {' or '.join(r.describe() for r in dtype_rule.devices)} "
                   f"(source: {dtype_rule.source})")
    f = d.features
    out.append(f"- features: expert biases {'yes' if f.bias else 'no'}, router weight on input "
               f"{'yes' if f.apply_router_weight_on_input else 'no'}, custom swigluoai constants "
               f"{'yes' if f.swigluoai_params else 'no'} (source: {f.source})")
    if f.nondeterministic:
        out.append(f"- not bit-for-bit reproducible: {f.nondeterministic}")
    for act, impl in d.activations.items():
        if impl.fidelity == "approximate":
            out.append(f"- {act.value} is approximate: {impl.note} (source: {impl.source})")
    for rule in d.shape_rules:
        when = "" if rule.when == rule.when.__class__() else f" when {rule.when.describe()}"
        out.append(f"- shape: {rule.dimension} multiple of {rule.multiple_of}{when}"
                   f"{' (padded by the adapter)' if rule.pad else ''} (source: {rule.source})")
    for lim in d.limitations:
        out.append(f"- known limitation: {lim.reason} (source: {lim.source})")
    r = d.routing
    if r.in_kernel:
        out.append("- in-kernel routing: " + ", ".join(m.value for m in r.in_kernel)
                   + ("; precomputed top-k" if r.precomputed else ""))
    for limit in r.limits:
        path = ", ".join(m.value for m in limit.methods) or "precomputed top-k"
        out.append(f"- routing bound ({path}): {limit.describe()} (source: {limit.source})")
    for req in d.requirements:
        cost = f"; first build {req.build_cost}" if req.build_cost else ""
        out.append(f"- requires {req.kind} `{req.name}`{cost}")
    out.append("- hardware verification: " + verification_text(d))
    return out + [""]


def verification_text(d: BackendCapability) -> str:
    """Per device family: verified on hardware (with the record) or only cited from upstream."""
    from ..provenance import verification_lines

    return " | ".join(verification_lines(d))


def _fits(console: "Console", table) -> bool:
    """Whether a table fits the console without cutting a cell (its natural width)."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10**6), table).maximum
    return natural <= console.width


def _backend_lines(console: "Console", title: str, rows: list[tuple[str, str]]) -> None:
    """The narrow-terminal form of a matrix: one wrapped line per backend, nothing cut."""
    from rich.table import Table

    console.print(title, markup=False, highlight=False)
    table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for backend, text in rows:
        table.add_row(backend, text)
    console.print(table)


def print_matrix(console: "Console", declarations: Iterable[BackendCapability], device: DeviceSpec | None) -> None:
    from rich.table import Table

    decls = list(declarations)
    title = "activations" + (f" on {device.label()}" if device else "")
    labels = {d.id: d.id + ("" if device is None or any(r.matches(device) for r in d.devices) else " (not on device)")
              for d in decls}
    acts = Table(title=title, title_justify="left")
    acts.add_column("backend", no_wrap=True)
    for a in Activation:
        acts.add_column(a.value, no_wrap=True)
    for d in decls:
        acts.add_row(labels[d.id], *(activation_cell(d, a) for a in Activation))
    if _fits(console, acts):
        console.print(acts)
    else:
        _backend_lines(console, title, [(labels[d.id], ", ".join(
            a.value + (" (approx)" if activation_cell(d, a) == "approx" else "")
            for a in Activation if activation_cell(d, a) != "-") or "-") for d in decls])
    quant_title = "quantization schemes (device families)"
    quant = Table(title=quant_title, title_justify="left")
    quant.add_column("backend", no_wrap=True)
    for k in QuantKind:
        quant.add_column(k.value, no_wrap=True)
    for d in decls:
        quant.add_row(d.id, *(quant_cell(d, k) for k in QuantKind))
    if _fits(console, quant):
        console.print(quant)
    else:
        _backend_lines(console, quant_title, [(d.id, "; ".join(
            f"{k.value}: {quant_cell(d, k)}" for k in QuantKind if quant_cell(d, k) != "-") or "-") for d in decls])
    verify = Table(title="hardware verification", title_justify="left")
    verify.add_column("backend", no_wrap=True)
    verify.add_column("status", overflow="fold")
    for d in decls:
        verify.add_row(d.id, verification_text(d))
    console.print(verify)
