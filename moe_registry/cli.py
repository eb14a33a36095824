"""`moe-registry`: explain, select, backends, schema, models, run, probe, bench, tune.

Thin: parse arguments, call the library, render. Exit codes: 0 ok; 2 bad input (one line on
stderr, no traceback); 3 no eligible backend, or a forced backend that cannot run the layer.

Every argparse parser of the project lives here (the library takes plain arguments), which is why
this file is longer than the ~500 lines the other modules keep to. ``--device`` always names a
target device preset; the torch device that `run` and `bench` use is ``--torch-device``.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

if TYPE_CHECKING:
    from .errors import BackendNotEligible, NoEligibleBackend

EXIT_OK, EXIT_BAD_INPUT, EXIT_NO_BACKEND = 0, 2, 3
COMMANDS = ("explain", "select", "backends", "schema", "models", "run", "probe", "bench", "tune")
# Torch-free, bounded by the input limits, done in well under a second: main() runs them with the
# cyclic garbage collector paused (see there).
PLANNING_COMMANDS = frozenset({"explain", "select", "backends", "schema", "models"})


class BadInput(Exception):
    """Anything the user can fix by changing the command line or the input files."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        raise BadInput(message)


# --- Output -------------------------------------------------------------------------------------


def _emit_json(data: Any) -> None:
    # Strict RFC 8259 (no NaN/Infinity), serialised whole first so an error never leaves half a document.
    _write_stdout(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _write_text(text: str) -> None:
    from .render import escape_control

    _write_stdout(escape_control(text, keep_newlines=True))  # Markdown: no raw control characters


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away: a normal end (main)
    except (OSError, ValueError) as exc:
        raise _OutputFailed(getattr(exc, "strerror", None) or str(exc)) from None


def _output_mode(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else "markdown" if getattr(args, "markdown", False) else "table"


# --- Shared argument groups -----------------------------------------------------------------------


def _add_output(p: argparse.ArgumentParser, markdown: bool = True) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="machine-readable output (docs/cli-json.md)")
    if markdown:
        group.add_argument("--markdown", action="store_true", help="Markdown, ready to paste into a bug report")


PARALLEL_HELP = """\
parallel layout, as the engines spell it:
  --tp 8                            TP8: every rank holds every expert, intermediate/8 of it
  --tp 8 --enable-expert-parallel   vLLM -tp 8 -ep: experts spread over the 8 ranks (EP8), unsplit
  --tp 8 --ep 8                     SGLang --tp-size 8 --ep-size 8: the same EP8 over the TP group
  --tp 8 --ep 2                     SGLang: EP2 within TP8, so each expert is split 4 ways (MoE TP4)
  --tp 4 --dp 2                     vLLM -tp 4 -dp 2: the experts span TP x DP = 8 ranks (MoE TP8)
  --tp 4 --dp 2 --enable-expert-parallel   vLLM: EP over TP x DP = 8 ranks (EP8)"""


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="target device preset (h100, b200, sm90, ...); default: this machine")
    _add_parallel(p)


def _add_parallel(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("parallelism (see the examples below)")
    group.add_argument("--tp", type=int, default=None, metavar="N",
                       help="tensor-parallel size (vLLM -tp, SGLang --tp-size); default 1, or --ep's N")
    group.add_argument("--ep", type=int, default=None, metavar="N",
                       help="expert-parallel size within the TP group (SGLang --ep-size): N divides --tp; "
                            "each expert is split tp/N ways")
    group.add_argument("--enable-expert-parallel", "-ep", dest="enable_ep", action="store_true",
                       help="vLLM's flag: experts spread over all tp x dp ranks, unsplit")
    group.add_argument("--dp", type=int, default=1, metavar="N",
                       help="data-parallel size (vLLM -dp): the experts span tp x dp ranks, as EP with "
                            "--enable-expert-parallel, else as TP (vLLM FusedMoEParallelConfig.make)")


def _add_layer_shape(p: argparse.ArgumentParser, *, required: bool) -> None:
    """One layer's shape, as `select` and `bench layer` spell it (read by _single_layer)."""
    group = p.add_argument_group("layer shape" if required else "single layer (target 'layer')")
    group.add_argument("--experts", type=int, required=required)
    group.add_argument("--top-k", type=int, required=required)
    group.add_argument("--hidden", type=int, required=required)
    group.add_argument("--intermediate", type=int, required=required)
    group.add_argument("--activation", default="silu")
    group.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                       help="hidden-state dtype (default bf16; fp16 on devices without bf16, SM < 80)")
    group.add_argument("--swiglu-limit", type=float, metavar="L",
                       help="clamp limit of swigluoai / silu_clamp (a config's swiglu_limit)")
    group.add_argument("--routing", default=None)
    group.add_argument("--bias", action="store_true")
    group.add_argument("--router-weight-on-input", action="store_true")


def _add_torch_device(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("--torch-device", default=None, metavar="cpu|cuda",
                   help="the torch device to run on (default: cuda when available)", **kwargs)
    # --device means a target device preset everywhere; here it is refused with a pointer (cmd_run / cmd_bench).
    p.add_argument("--device", help=argparse.SUPPRESS)


def _add_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", metavar="BACKEND", help="run this backend or fail with its reasons")
    p.add_argument("--prefer", metavar="BACKEND", action="append", default=[], help="put an eligible backend first")
    p.add_argument("--forbid", metavar="BACKEND", action="append", default=[], help="never choose this backend")
    p.add_argument("--exact", action="store_true", help="reject backends that approximate the activation")
    p.add_argument("--no-pad", action="store_true", help="reject backends that would need padding")
    p.add_argument("--policy", choices=("declared", "measured"), default="declared",
                   help="rank eligible backends by declared priority or by a measured cost table (--costs)")
    p.add_argument("--costs", metavar="FILE", help="cost table JSON written by `moe-registry bench` (--policy measured)")
    p.add_argument("--tokens", type=int, help="tokens per forward, for --policy measured")


def _single_layer(args: argparse.Namespace, *, quant: str | None, dtype: str | None, parallel: Any):
    """The layer the shape flags (_add_layer_shape) spell, as `select` and `bench layer` read them."""
    from .planner import single_layer

    return single_layer(experts=args.experts, top_k=args.top_k, hidden=args.hidden, intermediate=args.intermediate,
                        activation=args.activation or "silu", quant=quant, dtype=dtype,
                        swiglu_limit=args.swiglu_limit, routing=args.routing, bias=args.bias,
                        router_weight_on_input=args.router_weight_on_input, parallel=parallel)


def _device(name: str | None):
    from .schemas.device import get_device

    return None if name is None else get_device(name)


def _parallel(args: argparse.Namespace):
    """The experts' layout (ParallelConfig: MoE TP x EP) from the engine-style flags (PARALLEL_HELP)."""
    from .planner.layouts import from_flags

    return from_flags(tp=args.tp, ep=args.ep, enable_ep=args.enable_ep, dp=args.dp)


def _policy(args: argparse.Namespace):
    from .selection import DeclaredPriority

    declared = DeclaredPriority(exact_activations=args.exact, allow_padding=not args.no_pad)
    if args.policy == "declared":
        if args.costs:
            raise BadInput("--costs needs --policy measured")
        return declared
    if not args.costs:
        raise BadInput("--policy measured needs --costs FILE (written by `moe-registry bench`)")
    from .measured import CostTable, MeasuredPolicy

    return MeasuredPolicy(CostTable.load(args.costs), num_tokens=args.tokens, fallback=declared)


def _choice_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"force": args.force, "prefer": tuple(args.prefer), "forbid": tuple(args.forbid), "policy": _policy(args)}


# --- Commands -------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from . import render
    from .planner import _planner
    from .planner.layouts import suggest_layouts

    device, quant, choice = _device(args.device), args.quant, _choice_kwargs(args)
    # plan_model, for this layout and then each one suggest_layouts tries, reading the model once
    plan_on = _planner(args.model, device=device, quant=quant, memory=args.memory, **choice)
    plan = plan_on(_parallel(args))
    _warn_ignored_prefer(args.prefer, [lp.selection for lp in plan.layers], [lp.rejections for lp in plan.layers])
    mode = _output_mode(args)
    if args.engine:
        _explain_engine(plan, args.engine, mode)
        return _plan_exit(plan)
    if mode == "markdown":
        _write_text(render.plan_markdown(plan))
        return _plan_exit(plan)
    from .render.deploy import engine_defaults

    defaults = {engine: engine_defaults(plan, engine) for engine in ("vllm", "sglang")}
    style = "sglang" if args.ep is not None else "vllm"  # hints spell layouts the way the user did
    suggestions = suggest_layouts(plan, plan_on, style=style)
    replay = _replay(args)
    if mode == "json":
        _emit_json({**render.plan_json(plan), **render.advice_json(plan, defaults, suggestions, replay, style=style)})
    else:
        render.print_plan(plan, verbose=args.verbose, defaults=defaults, suggestions=suggestions, replay=replay,
                          style=style)
    return _plan_exit(plan)


def _plan_exit(plan: Any) -> int:
    return EXIT_NO_BACKEND if any(lp.selection is None for lp in plan.layers) else EXIT_OK


def _replay(args: argparse.Namespace) -> list[str]:
    """This `explain` command line without its parallel flags: a hint appends the layout it offers."""
    import shlex

    out = ["moe-registry", "explain", shlex.quote(args.model)]
    if args.device:
        out += ["--device", shlex.quote(args.device)]
    if args.quant:
        out += ["--quant", shlex.quote(args.quant)]
    if args.memory != "prefer":
        out += ["--memory", args.memory]
    for flag in ("force",):
        if getattr(args, flag):
            out += [f"--{flag}", shlex.quote(getattr(args, flag))]
    for flag in ("prefer", "forbid"):
        for value in getattr(args, flag):
            out += [f"--{flag}", shlex.quote(value)]
    out += [flag for flag, on in (("--exact", args.exact), ("--no-pad", args.no_pad)) if on]
    if args.policy != "declared":
        out += ["--policy", args.policy, "--costs", shlex.quote(args.costs)]
        out += ["--tokens", str(args.tokens)] if args.tokens is not None else []
    return out


def _warn_ignored_prefer(prefer: list[str], selections: list, rejections: list) -> None:
    """A --prefer backend that is not eligible is not silently ignored: one line on stderr each."""
    for backend in dict.fromkeys(prefer):
        ignored = [s for s in selections if s is not None and s.backend != backend
                   and any(r.backend == backend for r in s.rejections)]
        ignored += [r for rs in rejections for r in rs if r.backend == backend]
        if ignored:
            first = ignored[0]
            reasons = first.rejection(backend).reasons if hasattr(first, "rejection") else first.reasons
            _error_line(f"warning: --prefer {backend} ignored: not eligible ({reasons[0].code.value}: "
                        f"{reasons[0].message})")


def _explain_engine(plan: Any, engine: str, mode: str) -> None:
    """The engine's own pick (its selection code executed) beside ours, per layer group."""
    from . import render
    from .engines.answer import engine_answers
    from .render import engine as view

    groups = view.plan_groups(plan, engine_answers(plan, engine, source="executed"))
    if mode == "json":
        _emit_json(view.engine_json(plan, groups, engine))
    elif mode == "markdown":
        _write_text(view.engine_markdown(plan, groups, engine))
    else:
        view.print_engine(render.console(), plan, groups, engine)


def cmd_select(args: argparse.Namespace) -> int:
    from . import render
    from .selection import select_backend

    device = _device(args.device)
    dtype = args.dtype
    no_bf16 = device is not None and device.vendor == "nvidia" and device.sm is not None and device.sm < 80
    if no_bf16 and dtype == "bf16":
        raise BadInput(f"{device.label()} has no bf16 (SM80+); engines run fp16 there: use --dtype fp16")
    if dtype is None:
        dtype = "fp16" if no_bf16 else "bf16"
        if no_bf16:
            print(f"moe-registry: note: {device.label()} has no bf16; selecting for fp16", file=sys.stderr)
    layer = _single_layer(args, quant=args.quant, dtype=dtype, parallel=_parallel(args))
    selection = select_backend(layer, device, **_choice_kwargs(args))
    _warn_ignored_prefer(args.prefer, [selection], [])
    mode = _output_mode(args)
    if mode == "json":
        _emit_json(render.selection_json(selection))
    elif mode == "markdown":
        _write_text(render.selection_markdown(selection) + "\n")
    else:
        render.print_selection(selection, verbose=args.verbose)
    return EXIT_OK


def cmd_backends(args: argparse.Namespace) -> int:
    from . import render
    from .registry import default_registry

    registry = default_registry()
    device = _device(args.device)
    mode = _output_mode(args)
    if mode == "json":
        data = render.matrix_json(registry, device)
        data["problems"] = [p.model_dump() for p in registry.problems]
        _emit_json(data)
    elif mode == "markdown":
        _write_text(render.matrix_markdown(registry, device))
    else:
        console = render.console()
        render.print_matrix(console, registry, device)
        for problem in registry.problems:
            console.print(f"plugin problem ({problem.stage}) {problem.plugin}: {problem.message}", markup=False)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from pydantic import BaseModel

    from .schemas.capability import BackendCapability
    from .schemas.layer import LayerSpec
    from .schemas.selection import Selection

    models: dict[str, type[BaseModel]] = {"capability": BackendCapability, "layer": LayerSpec, "selection": Selection}
    chosen = models if args.which == "all" else {args.which: models[args.which]}
    _emit_json({name: model.model_json_schema() for name, model in chosen.items()})
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from . import render
    from .planner import list_presets

    presets = list_presets()
    if args.json:
        _emit_json({"schema_version": render.JSON_SCHEMA_VERSION, "presets": presets})
        return EXIT_OK
    from .render.terminal import table, width

    render.write_lines(table(["preset", "model; quantization"], [[n, d] for n, d in presets.items()], width(),
                             fixed=(0,)))
    return EXIT_OK


def _no_target_device(args: argparse.Namespace) -> None:
    """run and bench measure on this machine; --device (a target preset elsewhere) has no meaning here."""
    if args.device is not None:
        raise BadInput(f"{args.command} runs on this machine: --device names a target device (explain, select); "
                       f"the torch device to run on is --torch-device cpu|cuda")


def _progress(line: str) -> None:
    """A progress line on stderr (stdout keeps the report, or the JSON document), wrapped to the terminal."""
    from .render.terminal import width, wrap

    for part in wrap(line, width(), indent="    "):
        print(part, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from . import render
    from .measure.run import run_preset_layer

    from .measure.timing import check_run_size

    _no_target_device(args)
    parallel = _parallel(args)  # the same flags and meaning as explain / select
    check_run_size(args.tokens, args.repeats)  # before torch is imported or anything spawned
    if parallel.tp * parallel.ep > 1 and args.torch_device == "cpu":
        _check_cpu_ranks(parallel.tp * parallel.ep)
    say = None if args.json else _progress
    if parallel.tp * parallel.ep > 1:
        from .distributed.launch import run_distributed_preset

        if args.costs:
            raise BadInput("--costs applies to a single-GPU run (a sharded run selects per rank by declared priority)")

        if args.torch_device not in (None, "cpu", "cuda"):
            raise BadInput(f"--torch-device must be cpu or cuda for a sharded run, got {args.torch_device!r}")
        if say:
            say(f"spawning {parallel.tp * parallel.ep} ranks (MoE TP{parallel.tp} x EP{parallel.ep}); each builds its "
                "shard and checks it against the reference")
        report = run_distributed_preset(args.preset, layer=args.layer, tokens=args.tokens, tp=parallel.tp,
                                        ep=parallel.ep, seed=args.seed, force=args.force, quant=args.quant,
                                        repeats=args.repeats,
                                        cuda=None if args.torch_device is None else args.torch_device == "cuda")
    else:
        policy = None
        if args.costs:  # the measured policy at --tokens; it also names the decode and prefill backends
            from .measured import CostTable, MeasuredPolicy

            policy = MeasuredPolicy(CostTable.load(args.costs), num_tokens=args.tokens)
        report = run_preset_layer(args.preset, layer=args.layer, tokens=args.tokens, torch_device=args.torch_device,
                                  seed=args.seed, force=args.force, quant=args.quant, repeats=args.repeats,
                                  policy=policy, progress=say)
    if args.json:
        _emit_json({"schema_version": render.JSON_SCHEMA_VERSION, **report})
    else:
        render.write_lines(render.run_lines(report, render.terminal_width()))
    return EXIT_OK


def _check_cpu_ranks(world: int) -> None:
    """gloo ranks on the CPU: at most one per usable CPU, known without importing torch."""
    from .measure.timing import usable_cpus

    cpus = usable_cpus()
    if world > cpus:
        raise BadInput(f"{world} ranks (tp x ep) but this machine has {cpus} usable CPUs; at most {cpus} ranks run here")


def cmd_probe(args: argparse.Namespace) -> int:
    from .verify.report import main as probe_main

    if args.out:  # before the probe runs: an unusable path must not cost its minutes
        _check_writable("--out", Path(args.out))
    return probe_main(args)


def _check_writable(flag: str, path: Path) -> None:
    from ._files import check_output_path

    check_output_path(path, what=flag)  # UnusablePath (a ValueError): exit 2 before any work


def _bench_target(args: argparse.Namespace, parallel: Any) -> tuple[list[Any], dict[Any, str]]:
    """The layer shapes of bench / tune's TARGET: ``layer`` with the shape flags (spelt as in
    `select`), ``layer:experts=..`` or a model (moe_registry.measure.bench.resolve_target)."""
    from .measure.bench import resolve_target

    if args.target != "layer":
        return resolve_target(args.target, args.quant, parallel)
    missing = [flag for flag, value in (("--experts", args.experts), ("--top-k", args.top_k),
                                        ("--hidden", args.hidden), ("--intermediate", args.intermediate))
               if value is None]
    if missing:
        raise BadInput("bench layer needs the shape: layer:experts=8,top_k=2,hidden=256,intermediate=128 "
                       f"(or --experts/--top-k/--hidden/--intermediate; missing {', '.join(missing)})")
    layer = _single_layer(args, quant=args.quant, dtype=args.dtype, parallel=parallel)
    return [layer], {layer.shape_key(): "layer"}


def cmd_bench(args: argparse.Namespace) -> int:
    """Time every eligible, available backend (moe_registry.measure.bench.run_bench), write the cost
    table / held-out table / plot, print the report. Exit 3 when nothing could be timed."""
    from . import render
    from .measure.bench import parse_tokens, run_bench
    from .measure.report import plot, print_report
    from .schemas.layer import ParallelConfig

    _no_target_device(args)
    # The experts' layout from the engine-style flags; a cost table keys on the MoE TP x EP split only.
    layout = _parallel(args)
    parallel = ParallelConfig(tp=layout.tp, ep=layout.ep)
    tokens = parse_tokens(args.tokens)
    holdout = parse_tokens(args.holdout_tokens) if args.holdout_tokens else None
    from .measure.timing import MAX_REPEATS

    if not 1 <= args.reps <= MAX_REPEATS:
        raise BadInput(f"--reps must be from 1 to {MAX_REPEATS:,}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BadInput("--plot needs matplotlib (pip install 'moe-registry[plot]')") from None
    # Output paths are checked before the benchmark runs, so an unwritable one loses no results.
    for flag, path in (("--out", args.out), ("--holdout-out", args.holdout_out), ("--plot", args.plot)):
        if path:
            _check_writable(flag, Path(path))
    layers, labels = _bench_target(args, parallel)

    report = run_bench(layers, tokens, backends=list(args.backend) or None, reps=args.reps,
                       torch_device=args.torch_device, holdout_tokens=holdout, graphs=not args.eager_only,
                       progress=None if args.json else _progress)
    for path, table in ((args.out, report.table), (args.holdout_out, report.holdout)):
        if path and table is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            table.save(path)
    if args.plot and report.table.entries:
        plot(report.table, args.plot, labels=labels, overlay=None)
    if args.json:
        _emit_json(report.as_json())
    else:
        console = render.console()
        print_report(console, report.table, skipped=report.skipped, labels=labels)
        if report.holdout is not None and report.holdout.entries:
            print_report(console, report.holdout, labels=labels, title="held-out token counts")
        for path, what in ((args.out, "cost table"), (args.holdout_out, "held-out cost table"),
                           (args.plot if report.table.entries else None, "plot")):
            if path:
                console.print(f"wrote {what}: {path}", markup=False)
    if not report.table.entries:
        _error_line("nothing could be timed: "
                    + ("; ".join(f"{s['backend']} ({s['stage']}): {s['reason']}" for s in report.skipped[:3])
                       or "no eligible backend"))
        return EXIT_NO_BACKEND
    return EXIT_OK


def cmd_tune(args: argparse.Namespace) -> int:
    from .backends.triton_fused_moe.tune import tune
    from .measure.bench import parse_tokens, resolve_target
    from .schemas.layer import ParallelConfig

    layers, labels = resolve_target(args.target, args.quant, ParallelConfig(tp=args.tp, ep=args.ep))
    return tune(layers, labels, parse_tokens(args.tokens), budget_s=args.budget_s,
                out_dir=Path(args.out_dir) if args.out_dir else None)


# --- Parser ---------------------------------------------------------------------------------------


class _Skipped:
    """Stands in for the parser of a subcommand that is not running: its arguments are not built
    (argparse's add_argument calls are a good part of the CLI's start-up)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def build_parser(only: str | None = None, *, sole: bool = False) -> argparse.ArgumentParser:
    """Every subcommand; with ``only``, the arguments of that one alone (the others parse nothing,
    and are never dispatched to). ``sole``: the command line starts with ``only``, so the other
    subcommands are not registered at all (each parser argparse makes costs a few gettext look-ups,
    ~1 % of `explain`): the top-level parser only hands the rest of the line to ``only``'s, whose
    help, errors and results are the same."""
    parser = _Parser(prog="moe-registry", description=(
        "Which fused-MoE kernel runs each layer of a model, on any GPU, and why the others were rejected."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if sole and only is not None and name != only:
            return _Skipped()  # type: ignore[return-value]
        return sub.add_parser(name, **kwargs)

    p = add_parser("explain", help="explain the backend of every MoE layer of a model", epilog=PARALLEL_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p = p if only in (None, "explain") else _Skipped()  # type: ignore[assignment]
    p.add_argument("model", help="bundled preset name (see `moe-registry models`), model directory, or config.json")
    p.add_argument("--quant", help="override every MoE layer's quantization scheme (e.g. int4_w4a16:g128)")
    p.add_argument("--memory", choices=("prefer", "strict", "report"), default="prefer", help=(
        "whole-model expert weights per GPU vs the device: prefer a backend that fits (default), strict: "
        "no backend when none fits (exit 3), report only (docs/cli-json.md)"))
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also every rejected backend, per-selection notes and fingerprints")
    p.add_argument("--engine", choices=("vllm", "sglang"), help=(
        "run the installed engine's own selection for every MoE layer (as if on --device) and show its pick and "
        "its reasons beside ours"))
    _add_target(p)
    _add_choice(p)
    _add_output(p)
    p.set_defaults(func=cmd_explain)

    p = add_parser("select", help="select the backend of one layer", epilog=PARALLEL_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p = p if only in (None, "select") else _Skipped()  # type: ignore[assignment]
    _add_layer_shape(p, required=True)
    p.add_argument("--quant", default="bf16")
    p.add_argument("-v", "--verbose", action="store_true", help="every hint as declared, notes and the fingerprint")
    _add_target(p)
    _add_choice(p)
    _add_output(p)
    p.set_defaults(func=cmd_select)

    p = add_parser("backends", help="the capability matrix generated from the declarations")
    p = p if only in (None, "backends") else _Skipped()  # type: ignore[assignment]
    p.add_argument("--device", help="only what runs on this device preset")
    _add_output(p)
    p.set_defaults(func=cmd_backends)

    p = add_parser("schema", help="JSON Schema of declarations, layer specs and selections")
    p = p if only in (None, "schema") else _Skipped()  # type: ignore[assignment]
    p.add_argument("--which", choices=("all", "capability", "layer", "selection"), default="all")
    p.set_defaults(func=cmd_schema)

    p = add_parser("models", help="the bundled model presets")
    p = p if only in (None, "models") else _Skipped()  # type: ignore[assignment]
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = add_parser("run", help="run one layer of a preset on this machine and compare with the reference")
    p = p if only in (None, "run") else _Skipped()  # type: ignore[assignment]
    p.add_argument("--preset", required=True)
    p.add_argument("--layer", type=int, default=0, help="index among the MoE layers' model layers (default 0)")
    p.add_argument("--tokens", type=int, default=64)
    _add_torch_device(p)
    p.add_argument("--force", metavar="BACKEND")
    p.add_argument("--quant", help="override the layer's quantization scheme")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--costs", metavar="FILE", help="cost table from `moe-registry bench`: choose by measured time at "
                   "--tokens (graphed at T <= 64) and say which backend serves decode and which prefill")
    # --tp/--ep/--enable-expert-parallel as in explain: the experts' MoE TP x EP layout; that many ranks are
    # spawned here (NCCL with a GPU per rank, else gloo on the CPU), each checked against the reference.
    _add_parallel(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = add_parser("probe", help="check every declaration against the real kernels on this machine")
    p = p if only in (None, "probe") else _Skipped()  # type: ignore[assignment]
    p.add_argument("--backend", action="append", default=[], help="probe only this backend (repeatable)")
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    p.add_argument("--out", metavar="FILE", help="write a verification record (JSON)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_probe)

    p = add_parser("bench", help="time every eligible, available backend on a layer or a model's layers",
                       epilog=PARALLEL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p = p if only in (None, "bench") else _Skipped()  # type: ignore[assignment]
    p.add_argument("target", help="preset name, model directory, config.json, or 'layer' with --experts etc.")
    p.add_argument("--tokens", default="1,16,64,512,4096", help="comma-separated token counts")
    p.add_argument("--quant", help="override the quantization scheme")
    p.add_argument("--backend", action="append", default=[], help="only these backends")
    p.add_argument("--eager-only", action="store_true",
                   help="do not also time T <= 64 from CUDA graphs (decode as engines run it)")
    p.add_argument("--out", metavar="FILE", help="write the cost table (JSON)")
    p.add_argument("--plot", metavar="FILE.png", help="plot time vs tokens per backend")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reps", type=int, default=50)
    _add_torch_device(p, choices=("cpu", "cuda"))
    _add_parallel(p)
    p.add_argument("--holdout-tokens", help="extra token counts measured into a second table (for regret)")
    p.add_argument("--holdout-out", metavar="FILE", help="write the held-out table (JSON)")
    _add_layer_shape(p, required=False)
    p.set_defaults(func=cmd_bench)

    p = add_parser("tune", help="tune triton-fused-moe's launch configs for this GPU (writes JSON data)")
    p = p if only in (None, "tune") else _Skipped()  # type: ignore[assignment]
    p.add_argument("target", help="preset name, model directory, config.json, or layer:experts=..,top_k=..,...")
    p.add_argument("--tokens", default="1,16,64,512,4096", help="comma-separated token counts")
    p.add_argument("--quant", help="override the quantization scheme")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=60.0, help="search time per layer shape")
    p.add_argument("--out-dir", help="where to write (default: the package's configs/)")
    p.set_defaults(func=cmd_tune)
    return parser


def _message(exc: BaseException) -> str:
    """The CLI's one line for an error: every field of a validation error, else the message."""
    from pydantic import ValidationError

    from .errors import one_line, validation_one_line

    if isinstance(exc, ValidationError):
        return validation_one_line(exc, whole="input")
    return one_line(exc, typed=False)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # pydantic looks for its own plugins (observability hooks) by scanning every installed
    # distribution's entry points when the first model is built; the CLI uses none of them, and the
    # scan is a noticeable part of `explain`'s start-up. Set by the user, the variable is respected.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    json_mode = "--json" in argv  # known before parsing, so a parse error is a JSON document too
    if sys.stdout is None:  # started with stdout closed (`moe-registry ... >&-`)
        _error_line("error: standard output is closed")
        return EXIT_BAD_INPUT
    # A planning command creates few reference cycles, but importing pydantic and ~300 modules and
    # building ~40 models sets the cyclic collector off again and again, each pass walking what the
    # start-up made so far: ~1 % of `explain`'s instructions, for nothing to free (reference counting
    # frees the rest). It is back on when main returns, so a caller that runs main() in-process keeps
    # its own; the program (entry) leaves it off to the exit. The kernel commands keep it on.
    pause_gc = _command_of(argv) in PLANNING_COMMANDS and gc.isenabled()
    if pause_gc:
        gc.disable()
    try:
        return _guarded_main(argv, json_mode)
    finally:
        if pause_gc:
            gc.enable()


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand the arguments name (the first that is not an option), as the parser will see it."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def _guarded_main(argv: list[str], json_mode: bool) -> int:
    try:
        code = _main(argv, json_mode)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handler
        return code
    except BrokenPipeError:
        # The reader stopped (`| head -1`): a normal end. Point stdout at /dev/null so the
        # interpreter's final flush does not complain.
        return _closed_pipe()
    except OSError as exc:  # the final flush of a full stdout
        _closed_pipe()
        _error_line(f"error: cannot write the output: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    except _OutputFailed as exc:  # stdout full (/dev/full) or unusable: one line, nothing half-written
        _closed_pipe()
        _error_line(f"error: cannot write the output: {exc}")
        return EXIT_BAD_INPUT


class _OutputFailed(Exception):
    """Standard output cannot be written (a full disk, /dev/full, a closed descriptor)."""


def _stdout_failure() -> str | None:
    """Why stdout cannot take what is buffered, or None when it can."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or one_line_of(exc)
    return None


def one_line_of(exc: BaseException) -> str:
    from .errors import one_line

    return one_line(exc, typed=False)


def _main(argv: list[str], json_mode: bool) -> int:
    from pydantic import ValidationError

    from .errors import BackendNotEligible, NoEligibleBackend

    parsed = False
    try:
        command = _command_of(argv)
        args = build_parser(command, sole=argv[:1] == [command]).parse_args(argv)
        json_mode = bool(getattr(args, "json", False))
        handler: Callable[[argparse.Namespace], int] = args.func
        parsed = True
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below, not at interpreter exit
        return code
    except (BrokenPipeError, _OutputFailed):
        raise  # main: a closed pipe is a normal end, a full stdout one line
    except SystemExit as exc:
        if not parsed:  # argparse's --help
            raise
        # Our code never exits from inside a command: plugin or adapter code did (run, bench, probe).
        return _internal_error(RuntimeError(f"code called sys.exit({exc.code!r}) while the command ran "
                                            "(a plugin's adapter?)"), json_mode)
    except (NoEligibleBackend, BackendNotEligible) as exc:
        _print_no_backend(exc, json_mode)
        return EXIT_NO_BACKEND
    except ModuleNotFoundError as exc:
        if exc.name != "torch" and not (exc.name or "").startswith("torch."):
            return _internal_error(exc, json_mode)
        _bad_input("this command runs kernels and needs torch, which is not installed "
                   "(pip install 'moe-registry[torch]'); planning commands work without it", json_mode)
        return EXIT_BAD_INPUT
    except (BadInput, ValidationError, ValueError, OSError) as exc:
        # ValueError covers UnknownBackend, PlanError and quant/activation/device parse errors.
        failure = _stdout_failure() if isinstance(exc, OSError) else None
        if failure is None and isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            failure = exc.strerror or "no space left"  # only writing fills a device: the output
        if failure is not None:
            raise _OutputFailed(failure) from None
        _bad_input(_message(exc), json_mode)
        return EXIT_BAD_INPUT
    except RecursionError:
        _bad_input("input nested too deeply", json_mode)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line; MOE_REGISTRY_DEBUG=1 shows the traceback
        if os.environ.get("MOE_REGISTRY_DEBUG"):
            raise
        return _internal_error(exc, json_mode)


def _error_line(text: str) -> None:
    from .render import escape_control

    if sys.stderr is None:
        return
    try:
        print(f"moe-registry: {escape_control(text)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr full or closed: the exit code alone must tell
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def _bad_input(message: str, json_mode: bool) -> None:
    """One line on stderr; with --json also an error object on stdout (docs/cli-json.md)."""
    _error_line(f"error: {message}")
    if json_mode:
        from .render import JSON_SCHEMA_VERSION

        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "error": "bad_input", "message": message})


def _internal_error(exc: Exception, json_mode: bool) -> int:
    message = f"{type(exc).__name__}: {_message(exc)}"
    _error_line(f"internal error: {message} (set MOE_REGISTRY_DEBUG=1 for the traceback)")
    if json_mode:
        from .render import JSON_SCHEMA_VERSION

        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "error": "internal_error", "message": message})
    return 1


def _closed_pipe() -> int:
    """The reader went away (``explain ... | head``): a normal end, as for any Unix filter. Point
    stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured by a test)
        pass
    return EXIT_OK


def _print_no_backend(exc: "NoEligibleBackend | BackendNotEligible", json_mode: bool) -> None:
    from . import render
    from .errors import BackendNotEligible

    if json_mode:
        if isinstance(exc, BackendNotEligible):
            data = {"error": "backend_not_eligible", "backend": exc.backend,
                    "reasons": [r.model_dump(mode="json") for r in exc.reasons]}
        else:
            data = {"error": "no_eligible_backend", "rejections": [r.model_dump(mode="json") for r in exc.rejections]}
        _emit_json({"schema_version": render.JSON_SCHEMA_VERSION, **data})
    else:
        _error_line(str(exc))


def entry() -> NoReturn:
    """The program, ``moe-registry`` and ``python -m moe_registry.cli``: :func:`main`, then exit. The
    process ends with the command, so a planning command's collector pause (see main) lasts to the
    end, and the interpreter skips the full collection it would otherwise run on exit (~2 % of
    `explain`'s instructions: a pass over every object the run created, with nothing left to free).
    The collection the interpreter runs while it tears the modules down runs even so; frozen
    (``gc.freeze``), the objects the command made are not walked there either (~4 % more). The
    teardown itself is skipped when it can be (:func:`_exit_now`)."""
    planning = _command_of(sys.argv[1:]) in PLANNING_COMMANDS
    if planning:
        gc.disable()
    code = main()
    if planning:
        gc.freeze()
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """End a planning command without tearing the interpreter down: deallocating every module and
    object one by one is ~5 % of `explain`'s instructions, for a process that ends anyway. What the
    interpreter would do that can be seen still happens: atexit handlers run and the standard streams
    are flushed. Returns (and the interpreter exits as usual) while another thread runs, or when a
    stream cannot be flushed, so that the interpreter reports it as it always does."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            return
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
